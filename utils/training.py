"""Training loop: one epoch, evaluation, and a step-budgeted finetune with best-validation selection.

Every stage trains through these functions, so the fast path (bf16 autocast + channels_last where
`utils.runtime.resolve_precision` chooses it) and the safety checks (a NaN or infinite loss stops
the run with `NonFiniteLossError`) apply everywhere. Model selection uses the validation loader;
the test set is only ever reported.
"""
import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from utils.errors import BridgeError, NonFiniteLossError
from utils.progress import bar, log
from utils.host_memory import keep_freed_host_memory
from utils.runtime import Precision

_CHECK_EVERY = 25  # steps between host-side NaN checks (each check is a device sync)


class _CompiledTwin:
    """The model's torch.compile'd twin for the batch size it first sees; other sizes run the model eagerly.

    dynamic=False: one graph for the full batch size; an epoch's last, smaller batch (or a loader with
    another batch size later in the process) runs eagerly instead of triggering a recompile.
    """

    def __init__(self, model):
        self.model, self.compiled, self.batch = model, torch.compile(model, dynamic=False), None

    def __call__(self, x):
        if self.batch is None:
            self.batch = x.shape[0]
        return (self.compiled if x.shape[0] == self.batch else self.model)(x)


def training_forward(model, precision):
    """What a training step calls: the model itself, or (precision.compile) its compiled twin.

    The twin shares the model's parameters and buffers, so masks edited in place, loaded states and
    optimizer steps all reach it; it is built once per model and kept in the model's __dict__ (not
    as a submodule, so state_dict keys do not change).
    """
    if not precision.compile:
        return model
    twin = model.__dict__.get("_bridge_compiled")
    if twin is None:
        twin = model.__dict__["_bridge_compiled"] = _CompiledTwin(model)
    return twin


@contextlib.contextmanager
def _explain_compile_failure(precision):
    """A compile that cannot run here (no C++ compiler, an unsupported op) ends with one line, not a trace."""
    if not precision.compile:
        yield
        return
    import torch._dynamo.exc
    import torch._inductor.exc

    try:
        yield
    except (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InvalidCxxCompiler) as err:
        inner = getattr(err, "inner_exception", None) or err
        first = next((line.strip() for line in str(inner).splitlines() if line.strip()), "")
        raise BridgeError(f"--compile failed ({type(inner).__name__}: {first}); run without --compile") from err


def _prepare(x, y, device, precision):
    x = x.to(device, non_blocking=True)
    if precision.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@dataclass
class EpochStats:
    loss: float
    acc: float
    steps: int
    samples: int
    seconds: float
    data_seconds: float = 0.0  # of `seconds`, the time spent waiting for the loader
    @property
    def images_per_s(self):
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def train_one_epoch(model, loader, optimizer, device, precision=Precision(), scheduler=None, max_steps=None,
                    desc="train", after_step=None, on_step=None):
    """One pass (or `max_steps` steps) over `loader`. `scheduler` is stepped per optimizer step.

    `after_step(model)` runs after each optimizer step (e.g. to re-apply a constraint);
    `on_step(steps, samples)` after that, with this epoch's counts so far: a true result ends the epoch
    there (an evaluation between steps, an early stop).
    Returns EpochStats; raises NonFiniteLossError on a NaN/inf loss.
    """
    model.train()
    keep_freed_host_memory(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    samples = steps = 0
    t0 = time.perf_counter()
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    waited = [0.0]
    forward = training_forward(model, precision)

    def timed(source):
        iterator = iter(source)
        while True:
            t = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            waited[0] += time.perf_counter() - t
            yield batch

    with bar(timed(loader), total=total, desc=desc, leave=False, unit="batch") as it, \
            _explain_compile_failure(precision):
        for x, y in it:
            if max_steps is not None and steps >= max_steps:
                break
            x, y = _prepare(x, y, device, precision)
            with precision.autocast(device):
                out = forward(x)
                loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step(model)
            steps += 1
            samples += y.numel()
            loss_sum += loss.detach().float() * y.numel()
            correct += (out.detach().argmax(1) == y).sum()
            if steps % _CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                raise NonFiniteLossError(f"non-finite training loss at step {steps} of {desc}")
            if on_step is not None and on_step(steps, samples):
                break
    loss_avg = (loss_sum / max(samples, 1)).item()
    if not math.isfinite(loss_avg):
        raise NonFiniteLossError(f"non-finite training loss in {desc}")
    return EpochStats(loss_avg, 100.0 * correct.item() / max(samples, 1), steps, samples, time.perf_counter() - t0,
                      waited[0])


@torch.no_grad()
def evaluate(model, loader, device, precision=Precision(), max_batches=None):
    """(accuracy %, mean cross-entropy) of `model` on `loader`, in eval mode."""
    was_training = model.training
    model.eval()
    keep_freed_host_memory(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = _prepare(x, y, device, precision)
        with precision.autocast(device):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        n += y.numel()
    model.train(was_training)
    if n == 0:
        return float("nan"), float("nan")
    return 100.0 * correct.item() / n, (loss_sum / n).item()


def clone_state(model):
    """A detached copy of the model's state_dict (parameters and buffers, masks included; no DDP prefix)."""
    model = model.module if hasattr(model, "module") else model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class FinetuneResult:
    best_val_acc: float
    best_epoch: int          # 1-based index into history of the best evaluation (0: the model as it came in)
    steps: int
    epochs: int
    seconds: float
    history: list = field(default_factory=list)
    images: int = 0          # training images seen (all processes), for utils.compute
    best_steps: int = 0      # optimizer steps done when the kept state was evaluated

    @property
    def best_val_loss(self):
        return self.history[self.best_epoch - 1]["val_loss"] if self.best_epoch else math.nan


def finetune(model, train_loader, val_loader, optimizer, device, precision=Precision(), steps=None, epochs=None,
             patience=None, scheduler=None, desc="finetune", verbose=True, after_step=None, initial_val_acc=None,
             ddp=False, eval_every=None, on_eval=None):
    """Train for a step budget (or whole epochs), evaluating on `val_loader` after every (partial) epoch, or
    every `eval_every` optimizer steps (and after the last one) when given.

    The state with the best validation accuracy (strictly better than any earlier one, starting
    from `initial_val_acc` when given, i.e. the model as it came in) is loaded back at the end.
    Stops early after `patience` evaluations without improvement. Returns a FinetuneResult; its history
    has one row per evaluation. `on_eval(row, best_state)` runs after each evaluation with the row and
    the best state so far (what a run stopped at `row["steps"]` would return), e.g. to save it.
    With ddp=True under torchrun the model trains as DistributedDataParallel, each process on its
    shard of every batch order (the step budget then counts steps of the sharded loader).
    """
    from utils import distributed as dist

    if ddp and dist.is_distributed():
        train_loader.shard(dist.rank(), dist.world_size())
        try:
            return finetune(dist.wrap_ddp(model), train_loader, val_loader, optimizer, device, precision, steps,
                            epochs, patience, scheduler, desc, verbose, after_step, initial_val_acc, ddp=False,
                            eval_every=eval_every, on_eval=on_eval)
        finally:
            train_loader.shard(0, 1)
    if steps is None:
        steps = (epochs or 1) * len(train_loader)
    steps = int(steps)
    if eval_every is not None and int(eval_every) < 1:
        raise BridgeError(f"eval_every must be at least 1 step, got {eval_every}")
    world = dist.world_size()
    t0 = time.perf_counter()
    st = {"best_acc": -1.0 if initial_val_acc is None else float(initial_val_acc),
          "best_state": clone_state(model) if initial_val_acc is not None else None,
          "best_epoch": 0, "best_steps": 0, "stale": 0, "images": 0}
    history = []

    def evaluate_here(done, epoch, stats=None):
        val_acc, val_loss = evaluate(model, val_loader, device, precision)
        improved = val_acc > st["best_acc"]
        row = {"epoch": epoch, "steps": done, "images": st["images"], "val_loss": val_loss, "val_acc": val_acc}
        if stats is not None:
            row.update(train_loss=stats.loss, train_acc=stats.acc, seconds=stats.seconds,
                       data_seconds=stats.data_seconds)
        history.append(row)
        if improved:
            st.update(best_acc=val_acc, best_epoch=len(history), best_steps=done, best_state=clone_state(model),
                      stale=0)
        else:
            st["stale"] += 1
        if verbose:
            train = f"train loss {stats.loss:.4f} acc {stats.acc:.2f} | " if stats is not None else ""
            speed = f" | {stats.images_per_s:.0f} img/s" if stats is not None else ""
            log(f"[{desc}] epoch {epoch} steps {done}/{steps} | {train}val loss {val_loss:.4f} acc {val_acc:.2f}"
                f"{' *' if improved else ''}{speed}")
        if on_eval is not None:
            on_eval(row, st["best_state"])
        return patience is not None and st["stale"] >= patience

    done, epoch, stop = 0, 0, False
    while done < steps and not stop:
        epoch += 1
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch - 1)
        base_images, last_eval = st["images"], [done]

        def on_step(k, samples):  # evaluations between epochs' ends, every eval_every steps
            nonlocal stop
            st["images"] = base_images + samples * world
            now = done + k
            if eval_every is not None and (now % eval_every == 0 or now == steps):
                last_eval[0] = now
                stop = evaluate_here(now, epoch)
            return stop

        stats = train_one_epoch(model, train_loader, optimizer, device, precision, scheduler,
                                max_steps=steps - done, desc=f"{desc} ep{epoch}", after_step=after_step,
                                on_step=on_step)
        done += stats.steps
        st["images"] = base_images + stats.samples * world
        if eval_every is None:
            stop = evaluate_here(done, epoch, stats) or stop
        elif last_eval[0] == done and history:  # this epoch ended on an evaluation: give it the epoch's train stats
            history[-1].update(train_loss=stats.loss, train_acc=stats.acc)
        if stats.steps == 0:
            break
    if st["best_state"] is not None:
        (model.module if hasattr(model, "module") else model).load_state_dict(st["best_state"])
    return FinetuneResult(st["best_acc"], st["best_epoch"], done, epoch, time.perf_counter() - t0, history,
                          st["images"], st["best_steps"])


def adamw_finetune_optimizer(model, lr=3e-4, weight_decay=0.01):
    """The published finetune optimizer: AdamW over all parameters (masked weight_orig entries included)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
