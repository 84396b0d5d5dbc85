"""The dense training stage (pretrain.py): SGD with a cosine schedule over --epochs, early stopping on
validation accuracy, the best-validation checkpoint, and the resume state written after every epoch.

The published cosine (T_max 200 with up to 1,000 epochs) restarts the learning rate after epoch 200;
ours anneals once over --epochs.
"""
import os
import time
from dataclasses import dataclass

import torch

from models import MODEL_HELP, canonical_model_name, model_loader
from utils import cli
from utils import distributed as dist
from utils import paths
from utils.checkpoints import (FORMAT, atomic_torch_save, load_checkpoint, load_state_file, load_state_into,
                               save_checkpoint)
from utils.compute import MacCounter, pass_flops
from utils.errors import BridgeError, CheckpointError
from utils.hparams import Hparams, flag
from utils.plots import plot_training_curves
from utils.progress import bar, log
from utils.records import write_csv
from utils.runtime import resolve_device, resolve_precision, rng_state, set_rng_state, set_seed, to_device
from utils.training import evaluate, train_one_epoch


@dataclass(frozen=True)
class PretrainHparams(Hparams):
    """The dense model's training recipe."""

    m_name: str = flag("vgg16", MODEL_HELP)
    tv_weights: str = flag(None, "a torchvision model's pretrained weights to start from: DEFAULT or a weights name "
                                 "(e.g. IMAGENET1K_V1), read from the torch hub cache (fetched unless --no_download); "
                                 "tensors whose shape differs (the classifier head) stay freshly initialised")
    lr: float = flag(0.1, "SGD learning rate, cosine-annealed to 0 over --epochs", type=float)
    momentum: float = flag(0.9, "SGD momentum", type=float)
    weight_decay: float = flag(5e-4, "SGD weight decay", type=float)
    epochs: int = flag(200, "cosine schedule length and maximum number of epochs", type=int, aliases=("--max_epochs",))
    patience: int = flag(30, "stop after this many epochs without a better val accuracy", type=int)
    resume: bool = flag(False, "continue an interrupted run from last.pth", action="store_true", aliases=("-r",))
    work_dir: str = flag(".", "folder holding the {m_name}/ output tree")

    @classmethod
    def from_args(cls, args, **changes):
        hp = super().from_args(args, **changes)
        if hp.epochs < 1:
            raise BridgeError("--epochs must be at least 1")
        return hp.replace(m_name=canonical_model_name(hp.m_name))


@dataclass
class TrainingState:
    """Where a run stands after an epoch: what last.pth holds besides the model and optimizer."""

    epoch: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    stale: int = 0
    history: list = None

    def save(self, path, m_name, dataset, model, optimizer, scheduler, finished):
        atomic_torch_save({"format": FORMAT, "model": m_name, "dataset": dataset, "stage": "pretrain_state",
                           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "epoch": self.epoch, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                           "stale": self.stale, "history": self.history, "rng": rng_state(), "finished": finished},
                          path)

    @classmethod
    def restore(cls, path, m_name, dataset, model, optimizer, scheduler):
        """Load last.pth into the model, optimizer, scheduler and the random generators."""
        if not os.path.isfile(path):
            raise BridgeError(f"--resume: nothing to resume, {path} does not exist")
        state = load_state_file(path)
        if state.get("model") != m_name:
            raise CheckpointError(f"{path} belongs to model {state.get('model')!r}, not {m_name!r}")
        if state.get("dataset", dataset) != dataset:  # files from before the data set was recorded: not checked
            raise CheckpointError(f"{path} was trained on {state['dataset']!r}, not {dataset!r}")
        load_state_into(model, state["state_dict"], path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return cls(state["epoch"], state["best_val_acc"], state["best_epoch"], state["stale"], state["history"])


def run_pretraining(hp, data_hp, runtime, record):
    """Train hp.m_name from scratch (see module docstring); `record`: the arguments the checkpoints store.
    Returns {val_acc, test_acc, best_epoch, path}."""
    m_name, patience, max_epochs = hp.m_name, hp.patience, hp.epochs
    device = resolve_device(runtime.device)
    precision = resolve_precision(runtime.precision, device, runtime.compile)
    set_seed(runtime.seed)
    data = cli.build_data(data_hp, runtime.seed, device, m_name)
    log(data.describe() + f" | device {device} | precision {precision.name}")

    # the model first: a name or input size it rejects must not leave an empty ./<m_name>/ folder behind
    model = to_device(model_loader(m_name, dataset=data.spec.name, tv_weights=hp.tv_weights,
                                   download=not data_hp.no_download), device, precision)
    out_dir = cli.check_writable(paths.pretrain_dir(hp.work_dir, m_name))
    best_path, last_path = os.path.join(out_dir, paths.DENSE_FILE), os.path.join(out_dir, paths.PRETRAIN_STATE_FILE)
    net = dist.wrap_ddp(model)  # under torchrun: DistributedDataParallel, each process on its shard
    if dist.is_distributed():
        data.train.shard(dist.rank(), dist.world_size())
    optimizer = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)

    state = TrainingState(history=[])
    if hp.resume:
        state = TrainingState.restore(last_path, m_name, data.spec.name, model, optimizer, scheduler)
        log(f"resumed from {last_path}: epoch {state.epoch}, best val acc {state.best_val_acc:.2f} "
            f"(epoch {state.best_epoch})")

    t0 = time.perf_counter()
    finished = state.stale >= patience or state.epoch >= max_epochs
    epochs = bar(range(state.epoch, max_epochs), desc=f"pretrain {m_name}", unit="epoch", initial=state.epoch,
                 total=max_epochs)
    for epoch in epochs:
        if finished:
            break
        data.train.set_epoch(epoch)
        stats = train_one_epoch(net, data.train, optimizer, device, precision, desc=f"epoch {epoch + 1}")
        scheduler.step()
        val_acc, val_loss = evaluate(model, data.val, device, precision)
        improved = val_acc > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch, state.stale = val_acc, epoch + 1, 0
            save_checkpoint(best_path, model, m_name, data.spec.name, "pretrain", record,
                            {"val_acc": val_acc, "val_loss": val_loss}, epoch=epoch + 1)
        else:
            state.stale += 1
        state.history.append({"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": stats.loss,
                              "train_acc": stats.acc, "val_loss": val_loss, "val_acc": val_acc,
                              "seconds": stats.seconds, "images": stats.samples, "images_per_s": stats.images_per_s})
        log(f"[pretrain] epoch {epoch + 1}/{max_epochs} | train loss {stats.loss:.4f} acc {stats.acc:.2f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.2f}{' *' if improved else ''} | best {state.best_val_acc:.2f} "
            f"| {stats.images_per_s:.0f} img/s")
        state.epoch = epoch + 1
        finished = state.stale >= patience or epoch + 1 >= max_epochs
        state.save(last_path, m_name, data.spec.name, model, optimizer, scheduler, finished)
        write_csv(os.path.join(out_dir, "pretrain_log.csv"), state.history)
        if state.stale >= patience:
            log(f"early stop: no val improvement for {patience} epochs")
            break
    epochs.close()

    if not os.path.isfile(best_path):
        raise BridgeError(f"no checkpoint was written to {best_path}")
    best = load_checkpoint(best_path)
    load_state_into(model, best["state_dict"], best_path)
    val_acc, _ = evaluate(model, data.val, device, precision)
    test_acc, test_loss = evaluate(model, data.test, device, precision)
    # every epoch trained counts, not only those up to the best one (older resume states lack "images")
    images = sum(h.get("images", len(data.train.dataset)) for h in state.history)
    pretrain_flops = pass_flops(MacCounter(model, data.spec.image_size)(model), images, backward=True)
    save_checkpoint(best_path, model, m_name, data.spec.name, "pretrain", record,
                    {"val_acc": val_acc, "test_acc": test_acc, "test_loss": test_loss}, epoch=state.best_epoch,
                    pretrain_flops=pretrain_flops, pretrain_images=images)
    if state.history:
        plot_training_curves(state.history, os.path.join(out_dir, "pretrain_curves.png"), f"pretrain {m_name}")
    log(f"pretraining compute: {images:,} training images, {pretrain_flops:.4g} FLOPs (utils/compute.py)")
    log(f"best epoch {state.best_epoch}: val acc {val_acc:.2f} | test acc {test_acc:.2f} | "
        f"{time.perf_counter() - t0:.0f} s this run")
    log(f"wrote {best_path} (best-val model), {last_path} (resume state), "
        f"{os.path.join(out_dir, 'pretrain_log.csv')}, {os.path.join(out_dir, 'pretrain_curves.png')}")
    return {"val_acc": val_acc, "test_acc": test_acc, "best_epoch": state.best_epoch, "path": best_path}
