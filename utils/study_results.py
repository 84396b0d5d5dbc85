"""What report.py compares, read from the records the stages wrote (nothing is re-evaluated): the pruning
curves of a work dir, direct-pruning runs of several seeds, named arms of final checkpoints, and the
regrowth runs (utils.regrowth.outputs.RunSummary) grouped by method, each with the pruning curve its start
checkpoint came from."""
import glob
import json
import math
import os

from utils import paths
from utils.checkpoints import load_checkpoint, peek_checkpoint
from utils.compute import flops_total
from utils.errors import BridgeError
from utils.records import read_jsonl
from utils.regrowth.outputs import SUMMARY_FILE, RunSummary


def _curve_dir(work_dir, m_name, folder):
    return os.path.join(work_dir, m_name, folder)


def load_curves(work_dir, m_name, prefix=""):
    """{prefix + folder name: rows sorted by sparsity} of the pruning logs (newest row per level)."""
    curves = {}
    for folder in paths.PRUNING_FOLDERS:
        latest = {}
        for r in read_jsonl(os.path.join(_curve_dir(work_dir, m_name, folder), "prune_log.jsonl")):
            latest[(r.get("pruner"), r["key"])] = r
        if latest:
            curves[prefix + folder] = sorted(latest.values(), key=lambda r: r["sparsity"])
    return curves


def load_direct(dirs, m_name):
    """Direct pruning runs (one work dir per seed): {(pruner, sparsity rounded to 4 places): [rows]}."""
    groups = {}
    for d in dirs:
        for rows in load_curves(d, m_name).values():
            for r in rows:
                groups.setdefault((r.get("pruner"), round(r["sparsity"], 4)), []).append(r)
    return groups


def parse_arm(spec):
    """'LABEL=PATH_OR_GLOB[,PATH_OR_GLOB...]' -> (label, [checkpoint paths]) (globs expanded and sorted)."""
    if "=" not in spec:
        raise BridgeError(f"--arms {spec!r}: expected LABEL=CHECKPOINT[,CHECKPOINT...]")
    label, rest = spec.split("=", 1)
    paths = []
    for part in filter(None, rest.split(",")):
        found = sorted(glob.glob(part)) if any(ch in part for ch in "*?[") else [part]
        missing = [f for f in found if not os.path.isfile(f)]
        if not found or missing:
            raise BridgeError(f"--arms {label}: no checkpoint at {missing[0] if missing else part}")
        paths += found
    return label.strip(), paths


def load_arm(paths):
    """[{val_acc, test_acc, training_flops, sparsity, seed, path}] read from the checkpoints' records."""
    rows = []
    for path in paths:
        ckpt = load_checkpoint(path)
        metrics, args = ckpt.get("metrics") or {}, ckpt.get("args") or {}
        rows.append({"val_acc": float(metrics.get("val_acc", math.nan)),
                     "test_acc": float(metrics.get("test_acc", math.nan)),
                     "training_flops": flops_total(ckpt.get("training_flops"), math.nan), "sparsity": ckpt.get("sparsity"),
                     "seed": args.get("seed"), "path": path})
    return rows


def curve_folders(work_dir, m_name, names, prefix=""):
    """{curve name: resolved folder} for the curves of `work_dir` that load_curves found."""
    return {prefix + f: os.path.realpath(_curve_dir(work_dir, m_name, f)) for f in paths.PRUNING_FOLDERS
            if prefix + f in names}


def curve_for_start(start_ckpt, folders):
    """The pruning curve a run started from: the one whose folder holds its start checkpoint (same resolved
    path, so a start taken from another work dir's curve of the same kind is not matched to this one). A
    relative path recorded from another working directory is matched by its trailing folder names."""
    if not start_ckpt:
        return None
    folder = os.path.dirname(os.path.normpath(start_ckpt))
    where = os.path.realpath(folder)
    exact = next((name for name, f in folders.items() if f == where), None)
    if exact or os.path.isabs(folder):
        return exact
    return next((name for name, f in folders.items() if f.endswith(os.sep + folder)), None)


def _args_from_checkpoint(folder):
    """The run's arguments from its final checkpoint (for summaries written before they recorded them)."""
    for name in ("final_finetuned.pth", os.path.join("iter_0", "best_grown_model.pth")):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                return dict(peek_checkpoint(path).get("args") or {})
            except Exception:
                return {}
    return {}


def load_runs(paths, m_name):
    """Regrowth results from summary.json files (utils.regrowth.outputs.RunSummary): one row per run."""
    rows = []
    for root in paths:
        for path in sorted(glob.glob(os.path.join(root, "**", SUMMARY_FILE), recursive=True)):
            try:
                run = RunSummary.load(path, lambda: _args_from_checkpoint(os.path.dirname(path)))
            except (OSError, json.JSONDecodeError):
                continue
            if run.model not in (m_name, None):
                continue
            args = run.args
            rows.append({"type": run.type, "start_sparsity": run.start_sparsity, "start_test_acc": run.start_test_acc,
                         "start_val_acc": run.start_val_acc, "final_sparsity": run.final_sparsity,
                         "val_acc": run.val_acc, "test_acc": run.test_acc, "steps": run.steps, "kind": run.kind,
                         "allocator": run.allocator, "init": args.get("init_strategy", "?"),
                         "finetune_epochs": args.get("finetune_epochs"), "finetune_steps": run.finetune_steps,
                         "selection": run.selection, "training_flops": run.training_flops, "seed": run.seed,
                         "start_ckpt": run.start_ckpt, "path": path, "search": search_label(run), "method_args": args})
    return rows


# recorded arguments that may differ between the seeds of one method: the seed itself, names, paths, and how the
# run was executed (device, precision, loader), none of which defines the method
NOT_METHOD = {"seed", "tag", "initial_ckpt", "save_dir", "work_dir", "data_dir", "dense_ckpt", "cache_dir", "resume",
              "device", "precision", "compile", "num_workers", "data_backend", "eval_batch_size", "deterministic",
              "trust_pickle", "no_download", "wandb", "no_wandb", "baseline_dir"}


def start_identity(path):
    """How a start checkpoint was made (stage, pruner, finetune steps, sparsity): the seeds of one method start
    from checkpoints made alike, each with its own seed; the path when the file cannot be read."""
    try:
        ck = peek_checkpoint(path)
        return (ck.get("stage"), ck.get("pruner"), ck.get("finetune_steps"), round(float(ck["sparsity"]), 4))
    except Exception:
        return path


def search_label(run):
    """(what scored the search's episodes, how many episodes it ran) of a RunSummary."""
    proxy = run.reward_proxy
    if proxy == "steps":
        steps = run.mini_finetune_steps
        length = f"{steps}" if steps is not None else f"{run.args.get('mini_finetune_epochs', '?')} epochs"
        proxy = f"steps {length}" + (" (--fast)" if run.args.get("fast") else "")
    return proxy, run.episodes


def search_cell(group):
    """One group's search: the proxy and the episodes each seed ran ('..., 61 / 70 ep.'; early stops differ)."""
    proxies = sorted({r["search"][0] for r in group})
    episodes = sorted({r["search"][1] for r in group if r["search"][1] is not None})
    return " / ".join(proxies) + (f", {' / '.join(map(str, episodes))} ep." if episodes else "")


def group_runs(rows):
    """Runs differing only by seed, tag, paths and execution settings -> one group: same type, kind, start
    (how it was made), target and recorded method arguments."""
    groups = {}
    for r in rows:
        key = (r["type"], r["kind"], round(r["final_sparsity"], 3), start_identity(r["start_ckpt"]),
               tuple(sorted((k, repr(v)) for k, v in r["method_args"].items() if k not in NOT_METHOD)))
        groups.setdefault(key, []).append(r)
    return list(groups.values())
