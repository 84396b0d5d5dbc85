"""Stage 2 (unstructured): magnitude-prune the dense model and finetune, one checkpoint per level.

    --m_prune iterative   prune --sparsity (default 0.3) of the remaining weights per level, from level
                          --iter_start to --iter_end, finetuning after each: 0.3, 0.51, 0.657, ... 0.9953
    --m_prune oneshot     prune the dense model directly to each target in --oneshot (0.95 0.98 0.99)

Outputs, in {work_dir}/{m_name}/{iterative|oneshot}/:
    {m_name}_{sparsity}.pth      our checkpoint format, sparsity rounded to 4 decimals as published
    prune_log.jsonl              one row per level (also what --resume reads)
    prune_results.csv            sparsity, val and test accuracy per level
    accuracy_vs_sparsity.png     the pruning curve

Finetune: AdamW lr 3e-4, weight decay 0.01, a step budget (published: 12,520 steps per iterative level,
125,200 one-shot; --finetune_epochs or --finetune_steps override), best-validation state kept.
"""
import argparse
import os
import time

from models import MODEL_NAMES, canonical_model_name
from utils import cli
from utils.checkpoints import check_model_name, load_checkpoint, load_state_into, model_from_checkpoint, save_checkpoint
from utils.errors import BridgeError
from utils.masks import add_masks, model_sparsity
from utils.plots import plot_accuracy_vs_sparsity
from utils.progress import log
from utils.pruners import PRUNERS, weight_pruner_loader
from utils.records import append_jsonl, read_jsonl, write_csv
from utils.runtime import resolve_device, resolve_precision, set_seed, to_device
from utils.training import adamw_finetune_optimizer, clone_state, evaluate, finetune

# Published step budgets (40*313 and 400*313 steps; 313 was meant to be one CIFAR epoch).
PUBLISHED_STEPS = {"iterative": 40 * 313, "oneshot": 400 * 313}
MODES = {"iterative": "iterative", "iterate": "iterative", "oneshot": "oneshot"}


def get_args_parser():
    p = argparse.ArgumentParser("prune_unstructure.py", description="Unstructured magnitude pruning + finetune")
    p.add_argument("--m_name", default="resnet20", help=f"model: {', '.join(MODEL_NAMES)}")
    p.add_argument("--pruner", default="lamp", help=f"one of {', '.join(PRUNERS)}")
    p.add_argument("--m_prune", default="iterative", choices=sorted(MODES),
                   help="iterative (published spelling 'iterate' accepted) or oneshot")
    p.add_argument("--iter_start", type=int, default=1, help="first iterative level to produce (earlier ones are loaded)")
    p.add_argument("--iter_end", type=int, default=15, help="last iterative level (inclusive)")
    p.add_argument("--sparsity", type=float, default=0.3, help="iterative: fraction of the remaining weights pruned per level")
    p.add_argument("--oneshot", type=float, nargs="+", default=[0.95, 0.98, 0.99],
                   help="oneshot: target sparsities, each pruned directly from the dense model")
    p.add_argument("--finetune_epochs", type=float, default=None, help="finetune length per level in epochs")
    p.add_argument("--finetune_steps", type=int, default=None,
                   help="finetune length per level in optimizer steps (default: the published 12,520 / 125,200)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=50, help="finetune early stop after this many evaluations without gain")
    p.add_argument("--dense_ckpt", default=None, help="dense model (default {work_dir}/{m_name}/checkpoint/ckpt.pth)")
    p.add_argument("--work_dir", default=".", help="folder holding the {m_name}/ output tree")
    p.add_argument("--resume", action="store_true", help="skip levels already saved in the output folder")
    p.add_argument("--trust_pickle", action="store_true", help="allow reading pickled published checkpoints")
    cli.add_data_args(p)
    cli.add_runtime_args(p)
    return p


def level_filename(m_name, sparsity):
    """Published naming: the sparsity rounded to 4 decimals, Python's repr ('0.3', '0.657', '0.9953')."""
    return f"{m_name}_{round(sparsity, 4)}.pth"


def finetune_steps(args, mode, steps_per_epoch):
    if args.finetune_steps is not None and args.finetune_epochs is not None:
        raise BridgeError("give --finetune_steps or --finetune_epochs, not both")
    if args.finetune_steps is not None:
        return args.finetune_steps
    if args.finetune_epochs is not None:
        return max(0, int(round(args.finetune_epochs * steps_per_epoch)))
    return PUBLISHED_STEPS[mode]


def validate(args):
    args.m_name = canonical_model_name(args.m_name)
    args.mode = MODES[args.m_prune]
    weight_pruner_loader(args.pruner)
    cli.check_fraction("--sparsity", args.sparsity)
    for t in args.oneshot:
        cli.check_fraction("--oneshot target", t)
    if args.mode == "iterative" and not 1 <= args.iter_start <= args.iter_end:
        raise BridgeError(f"need 1 <= --iter_start <= --iter_end, got {args.iter_start} and {args.iter_end}")


def main(args):
    validate(args)
    cli.print_args(args, "prune_unstructure.py")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    set_seed(args.seed)
    data = cli.build_data(args, device)
    log(data.describe() + f" | device {device} | precision {precision.name}")

    dense_path = args.dense_ckpt or os.path.join(args.work_dir, args.m_name, "checkpoint", "ckpt.pth")
    out_dir = os.path.join(args.work_dir, args.m_name, args.mode)
    log_path = os.path.join(out_dir, "prune_log.jsonl")
    pruner = weight_pruner_loader(args.pruner)
    steps = finetune_steps(args, args.mode, len(data.train))
    dense_model, dense_ckpt = model_from_checkpoint(dense_path, args.m_name, expect="dense",
                                                    trust_pickle=args.trust_pickle)
    model = to_device(add_masks(dense_model), device, precision)
    dense_state = clone_state(model)  # all-ones masks: every one-shot target restarts from it
    dense_val, _ = evaluate(model, data.val, device, precision)
    log(f"dense model {dense_path}: val acc {dense_val:.2f} | finetune {steps} steps per level "
        f"({steps / max(len(data.train), 1):.1f} epochs)")

    done = {}
    if args.resume:
        for row in read_jsonl(log_path):
            if row.get("pruner") == args.pruner and os.path.isfile(row["path"]):
                done[(row["mode"], row["key"])] = row

    def run_level(key, amount, target):
        """Prune `amount` of the alive weights of `model`, finetune, save; returns the log row."""
        t0 = time.perf_counter()
        pruner(model, amount)
        sp = model_sparsity(model)
        pruned_val, _ = evaluate(model, data.val, device, precision)
        set_seed(args.seed + (key if isinstance(key, int) else int(round(target * 1e4))))
        opt = adamw_finetune_optimizer(model, args.lr, args.weight_decay)
        res = finetune(model, data.train, data.val, opt, device, precision, steps=steps, patience=args.patience,
                       desc=f"{args.mode} sp={sp:.4f}")
        test_acc, _ = evaluate(model, data.test, device, precision)
        path = os.path.join(out_dir, level_filename(args.m_name, sp))
        metrics = {"val_acc": res.best_val_acc, "test_acc": test_acc, "val_acc_before_finetune": pruned_val}
        save_checkpoint(path, model, args.m_name, data.spec.name, f"prune_{args.mode}", args, metrics,
                        pruner=args.pruner, level=key if args.mode == "iterative" else None, target_sparsity=target,
                        finetune_steps=res.steps, dense_ckpt=dense_path)
        row = {"mode": args.mode, "key": key, "pruner": args.pruner, "amount": amount, "target_sparsity": target,
               "sparsity": sp, "val_acc_before_finetune": pruned_val, "val_acc": res.best_val_acc,
               "test_acc": test_acc, "finetune_steps": res.steps, "seconds": time.perf_counter() - t0, "path": path}
        append_jsonl(log_path, row)
        log(f"[{args.mode}] sparsity {sp:.4f}: val {pruned_val:.2f} -> {res.best_val_acc:.2f} after finetune, "
            f"test {test_acc:.2f} | {row['seconds']:.0f} s | {path}")
        return row

    if args.mode == "iterative":
        start = args.iter_start
        while args.resume and (args.mode, start) in done and start <= args.iter_end:
            start += 1
        if start > 1:
            prev = done.get((args.mode, start - 1)) or _find_level(log_path, args.pruner, start - 1)
            if prev is None:
                raise BridgeError(f"level {start - 1} is needed to start at level {start} but no checkpoint for it "
                                  f"is recorded in {log_path}; start at --iter_start 1")
            ckpt = load_checkpoint(prev["path"])
            check_model_name(ckpt, args.m_name, prev["path"])
            load_state_into(model, {k: v.to(device) for k, v in ckpt["state_dict"].items()}, prev["path"])
            log(f"starting from level {start - 1}: {prev['path']} (sparsity {prev['sparsity']:.4f})")
        for level in range(start, args.iter_end + 1):
            run_level(level, args.sparsity, 1 - (1 - args.sparsity) ** level)
    else:
        for target in args.oneshot:
            key = round(target, 6)
            if (args.mode, key) in done:
                log(f"[oneshot] {target}: already saved ({done[(args.mode, key)]['path']}), skipped")
                continue
            model.load_state_dict(dense_state)
            run_level(key, target, target)

    rows = _latest_rows(read_jsonl(log_path), args.pruner)
    csv_path = write_csv(os.path.join(out_dir, "prune_results.csv"), rows,
                         ["sparsity", "val_acc", "test_acc", "val_acc_before_finetune", "target_sparsity", "pruner",
                          "amount", "finetune_steps", "seconds", "path"])
    series = {f"{args.pruner} {args.mode} (val)": [(r["sparsity"], r["val_acc"]) for r in rows],
              f"{args.pruner} {args.mode} (test)": [(r["sparsity"], r["test_acc"]) for r in rows]}
    png = plot_accuracy_vs_sparsity(series, os.path.join(out_dir, "accuracy_vs_sparsity.png"),
                                    f"{args.m_name} {args.mode} pruning ({args.pruner}); dense val {dense_val:.2f}")
    log(f"wrote checkpoints to {out_dir}/, table {csv_path}, curve {png}")
    return rows


def _find_level(log_path, pruner, level):
    rows = [r for r in read_jsonl(log_path) if r.get("pruner") == pruner and r.get("key") == level
            and r.get("mode") == "iterative" and os.path.isfile(r["path"])]
    return rows[-1] if rows else None


def _latest_rows(rows, pruner):
    """The newest row per (mode, level/target) for this pruner, sorted by sparsity."""
    latest = {}
    for r in rows:
        if r.get("pruner") == pruner:
            latest[(r["mode"], r["key"])] = r
    return sorted(latest.values(), key=lambda r: r["sparsity"])


if __name__ == "__main__":
    cli.run(main, get_args_parser())
