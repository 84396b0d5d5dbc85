"""Find the compression barrier of a pruning curve, and where a device's budget puts the start of regrowth.

For a folder of pruned checkpoints (unstructured or structured; several folders = several seeds of one
curve) it reads the recorded accuracy of each level (or evaluates checkpoints that record none), finds
the knee three ways (utils/boundary.py: the published residual rule with its last-point bug fixed, a
two-segment linear fit, and a tolerance rule with a bootstrap interval over seeds), and prints a table,
writes boundary.csv and boundary.png (curve, knees, tolerance band) next to the first folder.

With a device budget (--max_nonzero_params, --max_bytes with --storage, --max_flops, --max_latency_ms
with --latency_batch) it also reports the least sparse checkpoint that fits, the checkpoint just past the
knee, the regrowth budget (weights or filters) that stays inside the limit from there, and prints the
regrowth_oneshot.py / regrowth_structure_oneshot.py command to run.

    python find_drop_point.py --model_path resnet20/iterative --max_nonzero_params 5000
    python find_drop_point.py --model_path seed0/resnet20/oneshot seed1/resnet20/oneshot --tolerance 1
"""
import argparse
import glob
import os
import re

import numpy as np

from models import model_loader, model_spec
from utils import cli, paths
from utils.boundary import DeviceLimits, find_knees, regrowth_room, storage_bytes
from utils.checkpoints import checkpoint_metrics, load_checkpoint, model_from_checkpoint, peek_checkpoint
from utils.errors import BridgeError
from utils.export import LATENCY_BACKENDS, latency_meter
from utils.granularity import FILTERS, WEIGHTS, granularity_of_model, granularity_of_stage
from utils.hparams import DataHparams, RuntimeHparams
from utils.masks import count_pruned_params
from utils.plots import plot_knees
from utils.progress import log
from utils.records import write_csv, write_json
from utils.sparse_file import STORAGE


def get_args_parser():
    p = argparse.ArgumentParser("find_drop_point.py", description="Knee of the accuracy-sparsity curve + device budgets")
    p.add_argument("--model_path", nargs="+", required=True, help="folder(s) of pruned checkpoints (one per seed)")
    p.add_argument("--m_name", default=None, help="model (default: recorded in the checkpoints)")
    p.add_argument("--metric", default="val_acc", choices=("val_acc", "test_acc"), help="accuracy the knee is found on")
    p.add_argument("--tolerance", type=float, default=1.0, help="points of accuracy below dense still 'safe'")
    p.add_argument("--dense_acc", type=float, default=None,
                   help="dense accuracy (default: recorded in the dense checkpoint the levels were pruned from)")
    g = p.add_argument_group("device budget")
    g.add_argument("--max_nonzero_params", type=int, default=None, help="non-zero prunable weights")
    g.add_argument("--max_bytes", type=int, default=None,
                   help="bytes of the tensors in the sparse weight file export.py --format sparse writes with this "
                        "--storage and --value_bytes (the file adds its safetensors header, which export.py prints)")
    g.add_argument("--storage", default="bitmask", choices=STORAGE,
                   help="bitmask: values + 1 bit per prunable weight; csr: values + 4-byte index per non-zero")
    g.add_argument("--value_bytes", type=int, default=4, help="bytes per stored weight (4 fp32, 2 bf16)")
    g.add_argument("--max_flops", type=float, default=None, help="MACs per image (non-zero, or compact if structured)")
    g.add_argument("--max_latency_ms", type=float, default=None,
                   help="median latency of the compact model's forward pass on this CPU (structured only)")
    g.add_argument("--latency_batch", type=int, default=1)
    g.add_argument("--latency_backend", default="torch", choices=LATENCY_BACKENDS,
                   help="what runs the compact model: PyTorch eager, or onnxruntime on its ONNX export")
    p.add_argument("--trust_pickle", action="store_true")
    DataHparams.add_args(p)
    RuntimeHparams.add_args(p, fixed={"compile": False})
    return p


def _levels(args):
    """[(path, sparsity, {metric: acc}, ckpt metadata)] over all folders."""
    rows = []
    for folder in args.model_path:
        if not os.path.isdir(folder):
            raise BridgeError(f"--model_path folder not found: {folder}")
        for path in sorted(glob.glob(os.path.join(folder, "*.pth"))):
            if (os.path.basename(path).startswith((".tmp", "search_")) or path.endswith("_compact.pth")
                    or re.search(r"_steps\d+\.pth$", path)):  # --save_at snapshots are not levels of the curve
                continue
            sp, metrics = checkpoint_metrics(path)
            if sp > 0:
                rows.append((path, sp, metrics, folder))
    if not rows:
        raise BridgeError(f"no pruned checkpoint in {', '.join(args.model_path)}")
    return rows


def preferred_knee(knees):
    """Index of the knee that starts regrowth: the two-segment fit, else the residual rule, else tolerance."""
    return next((v for v in (knees.two_segment, knees.residual, knees.tolerance) if v is not None), None)


def main(args):
    cli.print_args(args, "find_drop_point.py")
    levels = _levels(args)
    first = load_checkpoint(levels[0][0], trust_pickle=args.trust_pickle)
    m_name = args.m_name or first.get("model")
    if m_name is None:
        raise BridgeError(f"{levels[0][0]} does not record its model; pass --m_name")
    missing = [lv for lv in levels if args.metric not in lv[2]]
    if missing:  # published files record nothing: evaluate them once
        from utils.runtime import resolve_device, resolve_precision, to_device
        from utils.training import evaluate

        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device, args.compile)
        data = cli.build_data(DataHparams.from_args(args), args.seed, device, m_name)
        loader = data.val if args.metric == "val_acc" else data.test
        for path, sp, metrics, _ in missing:
            model, _ = model_from_checkpoint(path, m_name, trust_pickle=args.trust_pickle)
            metrics[args.metric] = evaluate(to_device(model, device, precision), loader, device, precision)[0]
            log(f"evaluated {path}: {args.metric} {metrics[args.metric]:.2f}")
    dense_acc = args.dense_acc
    if dense_acc is None:  # the dense model the levels were pruned from (recorded path, or {m}/checkpoint/ckpt.pth)
        candidates = [first.get("dense_ckpt") or "",
                      paths.dense_checkpoint(os.path.dirname(os.path.dirname(os.path.abspath(args.model_path[0]))), m_name)]
        found = next((c for c in candidates if c and os.path.isfile(c)), None)
        if found:
            dense_acc = checkpoint_metrics(found)[1].get(args.metric)
    # one curve: mean over seeds at each (rounded) sparsity
    by_level = {}
    for path, sp, metrics, _ in levels:
        by_level.setdefault(round(sp, 4), []).append((path, metrics[args.metric]))
    xs = sorted(by_level)
    ys = [float(np.mean([a for _, a in by_level[s]])) for s in xs]
    seeds = [(s, [a for _, a in by_level[s]]) for s in xs]
    knees = find_knees(xs, ys, dense_acc, args.tolerance, seeds)
    granularity = granularity_of_stage(first.get("stage"))

    table = []
    for s, y in zip(xs, ys):
        table.append({"sparsity": s, args.metric: y, "seeds": len(by_level[s]), "path": by_level[s][0][0]})
    marks = {"residual": knees.residual, "two_segment": knees.two_segment, "tolerance": knees.tolerance}
    log(f"\n{m_name}: {len(xs)} levels ({granularity.sparsity_label}), "
        f"{len(args.model_path)} folder(s); dense {args.metric} "
        + (f"{dense_acc:.2f}" if dense_acc is not None else "unknown (pass --dense_acc for the tolerance rule)"))
    log(f"{'sparsity':>9} {args.metric:>8} {'seeds':>5}  knee")
    for i, r in enumerate(table):
        tags = [k for k, v in marks.items() if v == i]
        log(f"{r['sparsity']:>9.4f} {r[args.metric]:>8.2f} {r['seeds']:>5}  {', '.join(tags)}")
    for k, v in marks.items():
        log(f"knee ({k}): " + (f"sparsity {xs[v]:.4f}, {args.metric} {ys[v]:.2f}" if v is not None else "none found"))
        for i, r in enumerate(table):
            r[f"knee_{k}"] = i == v
    if knees.two_segment_slopes:
        log(f"two-segment slopes: {knees.two_segment_slopes[0]:+.1f} then {knees.two_segment_slopes[1]:+.1f} "
            "accuracy points per unit sparsity")
    if knees.tolerance_interval:
        lo, hi = knees.tolerance_interval
        log(f"tolerance-rule sparsity, 95% bootstrap interval over seeds: [{lo:.4f}, {hi:.4f}]")

    # the knee regrowth starts from, and the levels past it (device budgets and boundary.json use both)
    knee_idx = preferred_knee(knees)
    past = [r for r in table if knee_idx is not None and r["sparsity"] > xs[knee_idx]]
    budget_report = None
    limits = device_limits(args)
    if limits.any():
        budget_report = device_budget(limits, m_name, table, xs[knee_idx] if knee_idx is not None else None, past,
                                      granularity, args.trust_pickle)
    out_dir = args.model_path[0]
    csv_path = write_csv(os.path.join(out_dir, "boundary.csv"), table)
    summary = {"metric": args.metric, "dense_acc": dense_acc, "tolerance": args.tolerance,
               "knees": {k: (None if v is None else {"sparsity": xs[v], args.metric: ys[v]}) for k, v in marks.items()},
               "knee": None if knee_idx is None else {"rule": next(k for k in ("two_segment", "residual", "tolerance")
                                                                   if marks[k] == knee_idx),
                                                      "sparsity": xs[knee_idx], args.metric: ys[knee_idx],
                                                      "path": table[knee_idx]["path"]},
               "just_past_knee": past[0] if past else None,
               "levels": [{k: r[k] for k in ("sparsity", args.metric, "seeds", "path")} for r in table]}
    write_json(os.path.join(out_dir, "boundary.json"), summary)
    png = plot_knees(xs, ys, marks, dense_acc, args.tolerance, os.path.join(out_dir, "boundary.png"),
                     f"{m_name}: knee of the pruning curve ({args.metric})",
                     granularity.sparsity_label)
    log(f"wrote {csv_path}, {os.path.join(out_dir, 'boundary.json')}, {png}")
    return {"knees": knees, "table": table, "budget": budget_report}


def device_limits(args):
    return DeviceLimits(args.max_nonzero_params, args.max_bytes, args.max_flops, args.max_latency_ms, args.storage,
                        args.value_bytes, args.latency_batch, args.latency_backend)


def measure_level(r, m_name, limits, granularity, latency=None, trust_pickle=False):
    """Fill a level's row with what the device limits count: non-zero weights, bytes, MACs, latency
    (the MACs and latency as the level's granularity runs: see Granularity.device_costs; `latency`:
    utils.export.latency_meter)."""
    model, ckpt = model_from_checkpoint(r["path"], m_name, trust_pickle=trust_pickle)
    total, nnz, _ = count_pruned_params(model)
    r["nonzero_params"], r["prunable_params"] = nnz, total
    r["bytes"] = storage_bytes(model, limits.storage, limits.value_bytes)
    level = granularity if granularity is FILTERS else granularity_of_model(model)
    r.update(level.device_costs(model, model_spec(m_name, ckpt.get("dataset")).input_size, latency))
    r["fits"] = limits.fits(r)


def device_budget(limits, m_name, table, knee_sparsity, past, granularity, trust_pickle=False):
    """Which checkpoints fit the device, where regrowth starts, and how much it may regrow.

    past: the table's levels sparser than the knee (at knee_sparsity), least sparse first."""
    if limits.max_latency_ms is not None and granularity is WEIGHTS:
        raise BridgeError("--max_latency_ms applies to filter-pruned (compact) models; "
                          "a weight-sparse model runs dense kernels on this machine")
    latency = None if limits.max_latency_ms is None else latency_meter(limits.latency_backend, limits.latency_batch)
    for r in table:
        measure_level(r, m_name, limits, granularity, latency, trust_pickle)
    fitting = [r for r in table if r["fits"]]
    least_sparse = min(fitting, key=lambda r: r["sparsity"]) if fitting else None
    just_past = past[0] if past else None
    start = next((r for r in past if r["fits"]), None)
    log("\ndevice budget: " + limits.describe())
    for r in table:
        log(f"  sparsity {r['sparsity']:.4f}: {r['nonzero_params']:>10,} non-zero, {r['bytes']:>10,} bytes, "
            f"{r['macs'] / 1e6:>8.2f} M MACs" + (f", {r['latency_ms']:.2f} ms (IQR {r['latency_iqr_ms']:.2f})" if "latency_ms" in r else "")
            + ("  fits" if r["fits"] else ""))
    log(f"least sparse checkpoint that fits: {least_sparse['path'] if least_sparse else 'none'}")
    log(f"checkpoint just past the knee: {just_past['path'] if just_past else 'none'}")
    if start is None:
        log("no checkpoint past the knee fits the device; prune further first")
        return {"least_sparse_fit": least_sparse, "just_past_knee": just_past, "start": None}
    dense_filters = None
    if granularity is FILTERS:  # all filters of the architecture (masked ones included), on the start's data set
        dense_filters = FILTERS.total(model_loader(m_name, dataset=peek_checkpoint(start["path"]).get("dataset")))
    budget, frac = regrowth_room(start, table, knee_sparsity, limits, dense_filters)
    command, unit = granularity.regrowth_command(m_name, start, frac), granularity.unit_label
    log(f"start regrowth from {start['path']} (sparsity {start['sparsity']:.4f}); regrowth budget inside the device "
        f"limit and not past the knee: {budget:,} {unit} ({frac:.4%})")
    log(f"run:\n  {command}")
    return {"least_sparse_fit": least_sparse, "just_past_knee": just_past, "start": start, "budget": budget,
            "unit": unit, "command": command}


if __name__ == "__main__":
    cli.run(main, get_args_parser())
