"""The pruning stage's loop, shared by unstructured and structured pruning.

Iterative mode prunes `amount` of what is alive per level, finetunes and saves every level, and can
start from a saved level (`--iter_start K` loads level K-1) or skip saved levels (`--resume`).
One-shot mode prunes the dense model directly to each target. Each level: prune, val accuracy before
finetuning, finetune (AdamW, step budget, best-validation state), test accuracy, atomic checkpoint,
one JSON row in prune_log.jsonl. At the end the CSV table and the accuracy-vs-sparsity plot are
rebuilt from the log, so a resumed run's table is complete.
"""
import os
import time
from dataclasses import dataclass, field

from models import canonical_model_name

from utils import cli, paths
from utils.checkpoints import check_model_name, load_checkpoint, load_state_into, model_from_checkpoint, save_checkpoint
from utils.compute import ComputeLedger, MacCounter, recorded_flops
from utils.errors import BridgeError
from utils.hparams import DataHparams, Hparams, ModelSource, RuntimeHparams, flag, record
from utils.plots import plot_accuracy_vs_sparsity, plot_finetune_curve
from utils.progress import log
from utils.records import append_jsonl, read_jsonl, write_csv
from utils.runtime import resolve_device, resolve_precision, set_seed, to_device
from utils.training import adamw_finetune_optimizer, clone_state, evaluate, finetune

# Published step budgets (40*313 and 400*313 steps; 313 was meant to be one CIFAR epoch).
PUBLISHED_STEPS = {"iterative": 40 * 313, "oneshot": 400 * 313}
# --m_prune spellings (the published 'iterate' too) -> mode
PRUNING_MODES = {"iterative": "iterative", "iterate": "iterative", "oneshot": "oneshot"}


def level_schedule(m_prune, amount_flag, amount, iter_start, iter_end, targets):
    """The levels a pruning stage produces, checked; PruningPlan's mode, amount, iter_range and targets.
    iterative: `amount` (the flag `amount_flag`) of what is alive per level, levels iter_start..iter_end;
    oneshot: each of `targets` pruned directly from the dense model."""
    mode = PRUNING_MODES[m_prune]
    cli.check_fraction(amount_flag, amount)
    for t in targets:
        cli.check_fraction("--oneshot target", t)
    if mode == "iterative" and not 1 <= iter_start <= iter_end:
        raise BridgeError(f"need 1 <= --iter_start <= --iter_end, got {iter_start} and {iter_end}")
    return {"mode": mode, "amount": amount, "iter_range": (iter_start, iter_end), "targets": list(targets)}


@dataclass(frozen=True)
class LevelFinetuneHparams(Hparams):
    """The finetune after each pruning level."""

    group = "finetune"

    finetune_epochs: float = flag(None, "finetune length per level in epochs", type=float)
    finetune_steps: int = flag(None, "finetune length per level in optimizer steps (default: the published 12,520 / "
                               "125,200)", type=int)
    lr: float = flag(3e-4, "AdamW learning rate of the finetune after each level", type=float)
    weight_decay: float = flag(0.01, "AdamW weight decay of the finetune after each level", type=float)
    patience: int = flag(50, "finetune early stop after this many evaluations without gain", type=int)
    eval_every: int = flag(None, "evaluate (and keep the best state) every this many finetune steps instead of every "
                           "epoch; each evaluation is a row of {level}_evals.jsonl (the accuracy-vs-steps curve)",
                           type=int)
    save_at: tuple = flag([], "also save, at these step counts, the checkpoint a finetune of that many steps would end "
                          "with (the best evaluated state so far): {level}_steps{N}.pth; needs --eval_every dividing "
                          "them", type=int, nargs="+")
    resume: bool = flag(False, "skip levels already saved in the output folder", action="store_true")

    def steps(self, mode, steps_per_epoch):
        """The finetune length per level: --finetune_steps, --finetune_epochs, else the published budget."""
        if self.finetune_steps is not None and self.finetune_epochs is not None:
            raise BridgeError("give --finetune_steps or --finetune_epochs, not both")
        if self.finetune_steps is not None:
            return self.finetune_steps
        if self.finetune_epochs is not None:
            return max(0, int(round(self.finetune_epochs * steps_per_epoch)))
        return PUBLISHED_STEPS[mode]


@dataclass(frozen=True)
class PruningHparams:
    """Everything the pruning stages are configured by (the pruner's own flags stay in its script)."""

    source: ModelSource
    data: DataHparams
    runtime: RuntimeHparams
    finetune: LevelFinetuneHparams

    @staticmethod
    def add_args(p, m_name):
        ModelSource.add_args(p, defaults={"m_name": m_name})
        LevelFinetuneHparams.add_args(p)
        DataHparams.add_args(p)
        RuntimeHparams.add_args(p)

    @classmethod
    def from_args(cls, args):
        source = ModelSource.from_args(args)
        return cls(source.replace(m_name=canonical_model_name(source.m_name)), DataHparams.from_args(args),
                   RuntimeHparams.from_args(args), LevelFinetuneHparams.from_args(args))

    def record(self, args):
        """The run's arguments as printed and stored in its checkpoints."""
        return record(args, self.source, self.data, self.runtime, self.finetune)


def check_eval_grid(eval_every, save_at, steps):
    """--eval_every / --save_at must describe evaluations the finetune makes."""
    if eval_every is not None and eval_every < 1:
        raise BridgeError(f"--eval_every must be at least 1 step, got {eval_every}")
    if save_at and eval_every is None:
        raise BridgeError("--save_at needs --eval_every (the saved states are the best of the evaluations so far)")
    for n in save_at:
        if n < 1 or n > steps or (n % eval_every and n != steps):
            raise BridgeError(f"--save_at {n}: must be a multiple of --eval_every {eval_every} within the "
                              f"{steps} finetune steps")


def snapshot_path(level_path, steps):
    """Where --save_at N writes the N-step checkpoint of a level."""
    return f"{os.path.splitext(level_path)[0]}_steps{steps}.pth"


@dataclass
class PruningPlan:
    """What differs between the pruning kinds (see prune_unstructure.py / prune_structure.py)."""

    mode: str                    # iterative | oneshot
    method: str                  # pruner / importance name recorded in rows and checkpoints
    folder: str                  # output folder name under {work_dir}/{m_name}/
    stage: str                   # checkpoint stage
    granularity: object          # utils.granularity WEIGHTS | FILTERS: masks, sparsity, labels, table columns
    prune: object                # (model, amount, data) -> None
    extra_metrics: object = None  # model -> dict of extra row values (structured: ratios)
    on_saved: object = None      # (model, checkpoint path) -> None, after a level is saved (--save_compact)
    amount: float = 0.3          # iterative amount per level
    iter_range: tuple = (1, 15)
    targets: list = field(default_factory=list)
    inherited_flops: float = 0.0  # training FLOPs behind what `prune` applies (a transplanted mask's search)
    inherited_from: str = None


def run_pruning(hp, plan, record):
    """Run every level of `plan` configured by `hp` (PruningHparams; see module docstring); `record`: the
    arguments stored in the checkpoints. Returns the table rows."""
    m_name, seed, ft = hp.source.m_name, hp.runtime.seed, hp.finetune
    device = resolve_device(hp.runtime.device)
    precision = resolve_precision(hp.runtime.precision, device, hp.runtime.compile)
    set_seed(seed)
    data = cli.build_data(hp.data, seed, device, m_name)
    log(data.describe() + f" | device {device} | precision {precision.name}")
    dense_path = hp.source.dense_path()
    steps = ft.steps(plan.mode, len(data.train))
    check_eval_grid(ft.eval_every, ft.save_at, steps)
    dense_model, _ = model_from_checkpoint(dense_path, m_name, expect="dense", trust_pickle=hp.source.trust_pickle)
    # the output folder once the inputs are known good: a rejected run leaves no empty folder behind
    out_dir = cli.check_writable(os.path.join(hp.source.work_dir, m_name, plan.folder))
    log_path = os.path.join(out_dir, "prune_log.jsonl")
    model = to_device(plan.granularity.add_masks(dense_model), device, precision)
    dense_state = clone_state(model)  # all-ones masks: every one-shot target restarts from it
    macs = MacCounter(model, data.spec.image_size)
    prev_flops = [plan.inherited_flops, plan.inherited_from]  # iterative: what the level before recorded
    dense_val, _ = evaluate(model, data.val, device, precision)
    log(f"dense model {dense_path}: val acc {dense_val:.2f} | finetune {steps} steps per level "
        f"({steps / max(len(data.train), 1):.1f} epochs)")
    done = {}
    for row in read_jsonl(log_path) if ft.resume else []:
        if row.get("pruner") == plan.method and os.path.isfile(row["path"]):
            done[(row["mode"], row["key"])] = row

    probe = []  # a second model of the same structure, built when a --save_at snapshot needs one

    def save_snapshot(path, steps_done, best_state, val_acc, flops, extra_keys):
        """The checkpoint a `steps_done`-step finetune would end with (see --save_at), with its test accuracy."""
        if not probe:
            fresh, _ = model_from_checkpoint(dense_path, m_name, expect="dense", trust_pickle=hp.source.trust_pickle)
            probe.append(to_device(plan.granularity.add_masks(fresh), device, precision))
        probe[0].load_state_dict(best_state)
        test_acc, _ = evaluate(probe[0], data.test, device, precision)
        snap = snapshot_path(path, steps_done)
        save_checkpoint(snap, probe[0], m_name, data.spec.name, plan.stage, record,
                        {"val_acc": val_acc, "test_acc": test_acc}, finetune_steps=steps_done,
                        training_flops=flops.record(), **extra_keys)
        log(f"[{plan.mode}] {steps_done}-step state: val {val_acc:.2f}, test {test_acc:.2f} -> {snap}")

    def run_level(key, amount, target):
        t0 = time.perf_counter()
        plan.prune(model, amount, data)
        sp = plan.granularity.sparsity(model)
        pruned_val, _ = evaluate(model, data.val, device, precision)
        path = os.path.join(out_dir, paths.level_filename(m_name, sp))
        # iterative levels continue the level before; one-shot levels (and transplants) start from the dense model
        ledger = ComputeLedger(*(prev_flops if plan.mode == "iterative" else (plan.inherited_flops, plan.inherited_from)))
        level_macs = macs(model)
        extra_keys = dict(pruner=plan.method, level=key if plan.mode == "iterative" else None, target_sparsity=target,
                          dense_ckpt=dense_path, sparsity=sp)
        evals_path = os.path.splitext(path)[0] + "_evals.jsonl"
        evals = []
        if os.path.isfile(evals_path):
            os.remove(evals_path)

        def on_eval(row, best_state):
            evals.append(row)
            upto = ComputeLedger(ledger.inherited, ledger.inherited_from, dict(ledger.stages))
            upto.add_pass("prune_finetune", level_macs, row["images"], backward=True)
            append_jsonl(evals_path, {**row, "training_flops": upto.total})
            if row["steps"] in ft.save_at:
                save_snapshot(path, row["steps"], best_state, max(r["val_acc"] for r in evals), upto, extra_keys)

        set_seed(seed + (key if isinstance(key, int) else int(round(target * 1e4))))
        opt = adamw_finetune_optimizer(model, ft.lr, ft.weight_decay)
        res = finetune(model, data.train, data.val, opt, device, precision, steps=steps, patience=ft.patience,
                       desc=f"{plan.mode} sp={sp:.4f}", ddp=True, eval_every=ft.eval_every, on_eval=on_eval)
        ledger.add_pass("prune_finetune", level_macs, res.images, backward=True)
        prev_flops[:] = [ledger.total, path]
        test_acc, _ = evaluate(model, data.test, device, precision)
        extra = plan.extra_metrics(model) if plan.extra_metrics else {}
        metrics = {"val_acc": res.best_val_acc, "test_acc": test_acc, "val_acc_before_finetune": pruned_val}
        save_checkpoint(path, model, m_name, data.spec.name, plan.stage, record, metrics,
                        finetune_steps=res.steps, training_flops=ledger.record(), **extra_keys, **extra)
        if plan.on_saved:
            plan.on_saved(model, path)
        if ft.eval_every is not None and evals:
            plot_finetune_curve(evals, os.path.splitext(path)[0] + "_evals.png",
                                f"{m_name} {plan.method} {plan.mode} at {plan.granularity.level_label} {sp:.4f}: "
                                "finetune")
        row = {"mode": plan.mode, "key": key, "pruner": plan.method, "amount": amount, "target_sparsity": target,
               "sparsity": sp, "val_acc_before_finetune": pruned_val, "val_acc": res.best_val_acc,
               "test_acc": test_acc, "finetune_steps": res.steps, "best_steps": res.best_steps,
               "training_flops": ledger.total, "seconds": time.perf_counter() - t0, "path": path, **extra}
        append_jsonl(log_path, row)
        log(f"[{plan.mode}] {plan.granularity.level_label} {sp:.4f}: val {pruned_val:.2f} -> {res.best_val_acc:.2f} after finetune, "
            f"test {test_acc:.2f}" + "".join(f" | {k} {v:.4g}" for k, v in extra.items() if isinstance(v, float))
            + f" | {ledger.total:.3g} training FLOPs | {row['seconds']:.0f} s | {path}")
        return row

    if plan.mode == "iterative":
        start, end = plan.iter_range
        while ft.resume and (plan.mode, start) in done and start <= end:
            start += 1
        if start > 1:
            prev = done.get((plan.mode, start - 1)) or _find_level(log_path, plan.method, start - 1)
            if prev is None:
                raise BridgeError(f"level {start - 1} is needed to start at level {start} but no checkpoint for it "
                                  f"is recorded in {log_path}; start at --iter_start 1")
            ckpt = load_checkpoint(prev["path"])
            check_model_name(ckpt, m_name, prev["path"])
            load_state_into(model, {k: v.to(device) for k, v in ckpt["state_dict"].items()}, prev["path"])
            prev_flops[:] = [recorded_flops(ckpt), prev["path"]]
            log(f"starting from level {start - 1}: {prev['path']} ({plan.granularity.level_label} {prev['sparsity']:.4f})")
        for level in range(start, end + 1):
            run_level(level, plan.amount, 1 - (1 - plan.amount) ** level)
    else:
        for target in plan.targets:
            key = round(target, 6)
            if (plan.mode, key) in done:
                log(f"[oneshot] {target}: already saved ({done[(plan.mode, key)]['path']}), skipped")
                continue
            model.load_state_dict(dense_state)
            run_level(key, target, target)

    rows = _latest_rows(read_jsonl(log_path), plan.method)
    csv_path = write_csv(os.path.join(out_dir, "prune_results.csv"), rows, plan.granularity.pruning_columns)
    series = {f"{plan.method} {plan.mode} (val)": [(r["sparsity"], r["val_acc"]) for r in rows],
              f"{plan.method} {plan.mode} (test)": [(r["sparsity"], r["test_acc"]) for r in rows]}
    png = plot_accuracy_vs_sparsity(series, os.path.join(out_dir, "accuracy_vs_sparsity.png"),
                                    f"{m_name} {plan.folder} pruning ({plan.method}); dense val {dense_val:.2f}",
                                    xlabel=plan.granularity.axis_label)
    log(f"wrote checkpoints to {out_dir}/, table {csv_path}, curve {png}")
    return rows


def _find_level(log_path, method, level):
    rows = [r for r in read_jsonl(log_path) if r.get("pruner") == method and r.get("key") == level
            and r.get("mode") == "iterative" and os.path.isfile(r["path"])]
    return rows[-1] if rows else None


def _latest_rows(rows, method):
    """The newest row per (mode, level/target) for this method, sorted by sparsity."""
    latest = {}
    for r in rows:
        if r.get("pruner") == method:
            latest[(r["mode"], r["key"])] = r
    return sorted(latest.values(), key=lambda r: r["sparsity"])
