"""Evaluate one checkpoint or a folder of them: accuracy, sparsity and cost.

For each checkpoint: test and val accuracy, global and per-layer weight sparsity, channel (filter)
sparsity, non-zero parameters, dense and non-zero MACs (multiply-accumulates per image); structured
checkpoints also report the MACs of their compact export, and compact files (*_compact.pth) are
evaluated as they are. Prints a table and writes a CSV
(--csv; default next to the checkpoint, or evaluation.csv in the folder). For a folder it also
plots accuracy against sparsity: pruning checkpoints form the curve and regrown checkpoints are
drawn as points, with an arrow from the sparse model each one started from.

    python test_unstructure_regrowth_model.py --model_path resnet20/oneshot/resnet20_0.98.pth
    python test_unstructure_regrowth_model.py --model_path rl_saliency_oneshot/resnet20 --baseline_dir resnet20/oneshot
"""
import argparse
import os

from models import model_spec
from utils import cli, paths
from utils.checkpoints import COMPACT_FORMAT, model_from_checkpoint, peek_checkpoint
from utils.compact import load_compact
from utils.conversion import convert_checkpoints
from utils.costs import model_cost
from utils.errors import BridgeError
from utils.granularity import FILTERS, granularity_of_model
from utils.hparams import DataHparams, RuntimeHparams
from utils.masks import format_layer_table, layer_table, model_sparsity
from utils.plots import plot_accuracy_vs_sparsity
from utils.progress import log
from utils.records import write_csv
from utils.runtime import resolve_device, resolve_precision, set_seed, to_device
from utils.structured import filter_counts
from utils.training import evaluate

SKIP_STAGES = ("pretrain_state", "search_state")


def get_args_parser():
    p = argparse.ArgumentParser("test_unstructure_regrowth_model.py", description="Accuracy, sparsity and cost of checkpoints")
    p.add_argument("--model_path", required=True, help="a checkpoint file, or a folder searched recursively")
    p.add_argument("--m_name", default=None, help="model name (default: the one recorded in the checkpoint)")
    p.add_argument("--baseline_dir", default=None, help="extra folder of pruning checkpoints to draw as the curve")
    p.add_argument("--csv", default=None, help="CSV output path")
    p.add_argument("--per_layer", action="store_true", help="print the per-layer sparsity table of every checkpoint")
    p.add_argument("--no_eval", action="store_true", help="skip accuracy (sparsity and cost only; no data needed)")
    p.add_argument("--trust_pickle", action="store_true", help="allow reading pickled published checkpoints")
    p.add_argument("--knee", action="store_true",
                   help="folder only: also find the knee of its pruning curve (find_drop_point.py: residual rule, "
                        "two-segment fit, tolerance rule) on test accuracy; writes boundary.csv/json/png there")
    p.add_argument("--tolerance", type=float, default=1.0, help="--knee: points below dense still 'safe'")
    p.add_argument("--convert", default=None, metavar="OUT_DIR",
                   help="rewrite the checkpoints (e.g. the published formats) in this project's format into OUT_DIR, "
                        "then exit (needs --m_name for files that do not record their model); "
                        "the same as convert_checkpoint.py")
    DataHparams.add_args(p)
    RuntimeHparams.add_args(p, fixed={"compile": False})
    return p


def kind_of(stage):
    stage = stage or ""
    if stage.startswith("regrowth"):
        return "regrown"
    if stage.startswith("prune"):
        return "pruned"
    return "dense" if stage == "pretrain" else "other"


def main(args):
    cli.print_args(args, "test_unstructure_regrowth_model.py")
    if args.convert:
        return convert_checkpoints(paths.checkpoint_files(args.model_path), args.convert, args.m_name, args.dataset,
                                   args.trust_pickle)
    if args.knee and not os.path.isdir(args.model_path):
        raise BridgeError("--knee needs a folder of pruned checkpoints as --model_path")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, args.compile)
    set_seed(args.seed)
    files = paths.checkpoint_files(args.model_path)
    extra = paths.checkpoint_files(args.baseline_dir) if args.baseline_dir else []
    data, rows = None, []
    for path in files + [f for f in extra if f not in files]:
        meta = peek_checkpoint(path, trust_pickle=args.trust_pickle)  # stage, model, format; tensors read below
        if meta.get("stage") in SKIP_STAGES:
            continue
        m_name = args.m_name or meta.get("model")
        if m_name is None:
            raise BridgeError(f"{path} does not record its model; pass --m_name")
        if meta.get("format") == COMPACT_FORMAT:
            model, ckpt = load_compact(path)
        else:
            model, ckpt = model_from_checkpoint(path, m_name, trust_pickle=args.trust_pickle)
        model = to_device(model, device, precision)
        if data is None and not args.no_eval:
            data = cli.build_data(DataHparams.from_args(args), args.seed, device, m_name)
            log(data.describe())
        size = model_spec(m_name, ckpt.get("dataset") or args.dataset).input_size
        cost = model_cost(model, size, device)
        pruned_filters, total_filters = filter_counts(model)
        granularity = granularity_of_model(model)
        row = {"file": path, "model": m_name, "stage": ckpt.get("stage"), "kind": kind_of(ckpt.get("stage")),
               "sparsity": float(ckpt["sparsity"]) if ckpt.get("sparsity") is not None else model_sparsity(model),
               "weight_sparsity": model_sparsity(model), "channel_sparsity": pruned_filters / max(total_filters, 1),
               "structured": granularity is FILTERS, **cost, **granularity.evaluation_costs(model, size)}
        if not args.no_eval:
            row["test_acc"], row["test_loss"] = evaluate(model, data.test, device, precision)
            row["val_acc"], _ = evaluate(model, data.val, device, precision)
        start = ckpt.get("start_sparsity"), (ckpt.get("start_metrics") or {})
        if start[0] is not None:
            row["start_sparsity"] = start[0]
            row["start_val_acc"] = start[1].get("val_acc")
            row["start_test_acc"] = start[1].get("test_acc")
        row["in_folder"] = path in files
        rows.append(row)
        if args.per_layer or len(files) == 1:
            log(f"\n{path}\n" + format_layer_table(layer_table(model)))
    if not rows:
        raise BridgeError(f"no model checkpoint under {args.model_path}")

    header = (f"{'file':<56} {'weight sp':>9} {'chan sp':>7} {'nonzero':>10} {'MACs (M)':>9} {'nz/compact':>10} "
              f"{'val':>6} {'test':>6}")
    lines = [header]
    for r in rows:
        name = r["file"] if len(r["file"]) <= 56 else "..." + r["file"][-53:]
        effective = r.get("compact_macs", r["nonzero_macs"])
        lines.append(f"{name:<56} {r['weight_sparsity']:>9.4f} {r['channel_sparsity']:>7.4f} {r['nonzero_params']:>10,} "
                     f"{r['macs'] / 1e6:>9.2f} {effective / 1e6:>10.2f} {r.get('val_acc', float('nan')):>6.2f} "
                     f"{r.get('test_acc', float('nan')):>6.2f}")
    log("\n" + "\n".join(lines))
    base = args.model_path if os.path.isdir(args.model_path) else os.path.splitext(args.model_path)[0]
    csv_path = args.csv or (os.path.join(base, "evaluation.csv") if os.path.isdir(args.model_path)
                            else base + "_evaluation.csv")
    write_csv(csv_path, rows)
    log(f"wrote {csv_path}")
    if os.path.isdir(args.model_path) and not args.no_eval:
        curve = [(r["sparsity"], r["test_acc"]) for r in rows if r["kind"] == "pruned"]
        regrown = [r for r in rows if r["kind"] == "regrown"]
        arrows = [((r["start_sparsity"], r["start_test_acc"]), (r["sparsity"], r["test_acc"]))
                  for r in regrown if r.get("start_test_acc") is not None]
        png = plot_accuracy_vs_sparsity({"pruning (test)": curve} if curve else {},
                                        os.path.join(base, "accuracy_vs_sparsity.png"),
                                        f"{rows[0]['model']}: test accuracy vs sparsity",
                                        points={"regrown (test)": [(r["sparsity"], r["test_acc"]) for r in regrown]},
                                        arrows=arrows)
        log(f"wrote {png}")
    if args.knee:
        knee_of_folder(args)
    return rows


def knee_of_folder(args):
    """The boundary-estimation step of find_drop_point.py on the evaluated folder, with this run's data,
    runtime and model arguments."""
    import find_drop_point

    knee_args = find_drop_point.get_args_parser().parse_args(
        ["--model_path", args.model_path, "--metric", "test_acc", "--tolerance", str(args.tolerance)])
    for name, value in vars(args).items():
        if name != "model_path" and hasattr(knee_args, name):
            setattr(knee_args, name, value)
    return find_drop_point.main(knee_args)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
