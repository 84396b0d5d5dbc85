"""One report per model: every pruning curve and regrowth run of a model in one Markdown table and one figure.

Gathers, without re-evaluating anything (everything is read from the logs the stages wrote):
  * the dense model ({work_dir}/{m}/checkpoint/ckpt.pth),
  * the pruning curves ({work_dir}/{m}/{iterative,oneshot,structured_iterative,structured_oneshot}/prune_log.jsonl),
  * every regrowth run (summary.json) under --runs (default: the scripts' default save folders in
    {work_dir}): one-shot runs as start -> final, iterative runs as their last iteration.
Runs that differ only in seed (or --tag) are grouped and shown as mean ± std with the seeds listed;
each regrown result is compared with its pruning curve (the folder its start checkpoint came from)
interpolated at the regrown sparsity.

Writes {work_dir}/{m}/report.md and report.png (curves with regrown points and arrows from their starts).

    python report.py --m_name resnet20 --work_dir .
"""
import argparse
import math
import os

from models import canonical_model_name
from utils import cli, paths
from utils.checkpoints import checkpoint_metrics
from utils.compute import flops_total, format_mean_flops
from utils.errors import BridgeError
from utils.plots import plot_accuracy_vs_compute, plot_report
from utils.progress import log
from utils.pruning_curve import PruningCurve
from utils.records import write_json
from utils.stats import compare_groups, fmt_difference, fmt_mean_std, mean_std
from utils.study_results import (curve_for_start, curve_folders, group_runs, load_arm, load_curves, load_direct,
                                 load_runs, parse_arm, search_cell)

DEFAULT_RUNS = tuple(os.path.normpath(d) for d in paths.REGROWTH_SAVE_DIRS)


def get_args_parser():
    p = argparse.ArgumentParser("report.py", description="Markdown table + figure of every run of a model")
    p.add_argument("--m_name", default="resnet20")
    p.add_argument("--work_dir", default=".")
    p.add_argument("--runs", nargs="+", default=None,
                   help=f"folders searched for regrowth summary.json files (default {', '.join(DEFAULT_RUNS)} in work_dir)")
    p.add_argument("--metric", default="test_acc", choices=("test_acc", "val_acc"), help="accuracy shown")
    p.add_argument("--out", default=None, help="report path (default {work_dir}/{m_name}/report.md)")
    p.add_argument("--curve_dirs", nargs="+", default=[],
                   help="more work dirs whose {m_name}/ pruning curves are shown, labelled {dir name}/{curve}")
    p.add_argument("--direct", nargs="+", default=[],
                   help="work dirs of direct pruning runs (one per seed) each regrown result is compared with "
                        "at the same sparsity: mean ± std, the difference, Welch's p and a bootstrap 95%% interval")
    p.add_argument("--dense_ckpt", default=None, help="dense checkpoint (default {work_dir}/{m_name}/checkpoint/ckpt.pth)")
    p.add_argument("--title", default=None, help="report heading")
    p.add_argument("--arms", nargs="+", default=[], metavar="LABEL=CKPT[,CKPT...]",
                   help="named arms, each a comma-separated list of final checkpoints (one per seed; globs allowed): "
                        "a table of val / test accuracy and training FLOPs per arm, and {out}_compute.png "
                        "(--metric vs training compute)")
    p.add_argument("--baseline_arms", nargs="+", default=[],
                   help="labels of --arms every arm is compared with (differences of val and test accuracy, "
                        "Welch's p, bootstrap 95%% interval)")
    return p


def arms_section(arms, baselines):
    """Markdown lines and JSON records of the arms table: mean ± std of val / test and training FLOPs per arm,
    and the differences in val and test accuracy to each baseline arm (Welch's p, bootstrap 95% interval)."""
    unknown = [b for b in baselines if b not in arms]
    if unknown:
        raise BridgeError(f"--baseline_arms {', '.join(unknown)}: not among the --arms labels ({', '.join(arms)})")
    metrics = ("val_acc", "test_acc")
    head = ["arm", "n", "sparsity", "val acc", "test acc", "training FLOPs"]
    head += [f"Δ {m.replace('_acc', '')} vs {b}" for b in baselines for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    records = []
    for label, rows in arms.items():
        sp = [r["sparsity"] for r in rows if r["sparsity"] is not None]
        rec = {"arm": label, "n": len(rows), "paths": [r["path"] for r in rows], "seeds": [r["seed"] for r in rows],
               "sparsity": sum(sp) / len(sp) if sp else None, "vs": {}}
        for key in ("val_acc", "test_acc", "training_flops"):
            rec[f"{key}_mean"], rec[f"{key}_std"] = mean_std([r[key] for r in rows])
        cells = [label, str(len(rows)), f"{rec['sparsity']:.4f}" if sp else "-",
                 fmt_mean_std([r["val_acc"] for r in rows]), fmt_mean_std([r["test_acc"] for r in rows]),
                 format_mean_flops([r["training_flops"] for r in rows])]
        for b in baselines:
            for m in metrics:
                if b == label:
                    cells.append("—")
                    continue
                cmp = compare_groups([r[m] for r in rows], [r[m] for r in arms[b]])
                rec["vs"].setdefault(b, {})[m] = cmp
                cells.append(fmt_difference(cmp))
        lines.append("| " + " | ".join(cells) + " |")
        records.append(rec)
    return lines, records


def main(args):
    args.m_name = canonical_model_name(args.m_name)
    cli.print_args(args, "report.py")
    m_dir = os.path.join(args.work_dir, args.m_name)
    if not os.path.isdir(m_dir):
        raise BridgeError(f"no runs for {args.m_name}: {m_dir} does not exist")
    metric = args.metric
    dense_path = args.dense_ckpt or paths.dense_checkpoint(args.work_dir, args.m_name)
    dense = checkpoint_metrics(dense_path)[1] if os.path.isfile(dense_path) else {}
    curves = load_curves(args.work_dir, args.m_name)
    folders = curve_folders(args.work_dir, args.m_name, curves)
    for extra in args.curve_dirs:
        prefix = os.path.basename(os.path.normpath(extra)) + "/"
        more = load_curves(extra, args.m_name, prefix=prefix)
        curves.update(more)
        folders.update(curve_folders(extra, args.m_name, more, prefix))
    direct = load_direct(args.direct, args.m_name)
    direct_sorted = sorted(direct.items(), key=lambda kv: str(kv[0]))
    run_dirs = args.runs or [os.path.join(args.work_dir, d) for d in DEFAULT_RUNS]
    runs = load_runs([d for d in run_dirs if os.path.isdir(d)], args.m_name)
    groups = group_runs(runs)

    lines = [f"# {args.title or args.m_name + ': pruning and regrowth report'}", ""]
    if dense:
        lines += [f"Dense model: val {dense.get('val_acc', float('nan')):.2f}, test {dense.get('test_acc', float('nan')):.2f} "
                  f"({dense_path}).", ""]
    lines += ["## Pruning curves", "",
              "| curve | pruner | sparsity | val acc | test acc | finetune steps | training FLOPs |",
              "|---|---|---|---|---|---|---|"]
    for name, rows in curves.items():
        for r in rows:
            lines.append(f"| {name} | {r.get('pruner')} | {r['sparsity']:.4f} | {r['val_acc']:.2f} | {r['test_acc']:.2f} "
                         f"| {r.get('finetune_steps')} | {format_mean_flops([flops_total(r.get('training_flops'), math.nan)])} |")
    lines += ["", f"## Regrowth runs ({metric.replace('_', ' ')}; mean ± std over seeds where repeated)", "",
              "| type | unit | allocator | search | selection | init | start | sparsity start → end | start acc | "
              "regrown acc | "
              "pruning curve at end sparsity | Δ vs curve | direct pruning, same sparsity and finetune | Δ vs direct "
              "(Welch p, bootstrap 95% CI) | training FLOPs | final finetune (steps) | seeds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    points, arrows, records = {}, [], []
    groups.sort(key=lambda g: (g[0]["type"], g[0]["kind"], -g[0]["start_sparsity"], g[0]["allocator"], g[0]["init"]))
    for g in groups:
        first = g[0]
        accs = [r[metric] for r in g]
        curve_name = curve_for_start(first["start_ckpt"], folders)
        ref = ""
        delta = ""
        if curve_name:
            pts = [(r["sparsity"], r[metric]) for r in curves[curve_name]]
            at = PruningCurve(pts, metric, [])(first["final_sparsity"])
            ref = f"{at:.2f} ({curve_name})"
            delta = f"{mean_std(accs)[0] - at:+.2f}"
        start_acc = mean_std([r["start_test_acc"] if metric == "test_acc" else r["start_val_acc"] for r in g])[0]
        seeds = ", ".join(str(r["seed"]) for r in g)
        direct_rows = next((rows for (_, sp), rows in direct_sorted if abs(sp - first["final_sparsity"]) < 5e-4), None)
        direct_cell, vs_direct, record = "", "", {}
        if direct_rows:
            other = [r[metric] for r in direct_rows]
            cmp = compare_groups(accs, other)
            direct_mean, direct_std = mean_std(other)
            direct_cell = f"{fmt_mean_std(other)} (n={len(other)})"
            vs_direct = fmt_difference(cmp)
            record = {"direct_mean": direct_mean, "direct_std": direct_std, "direct_n": len(other),
                      "diff_vs_direct": cmp["diff"], "welch_p": cmp["welch_p"], "ci_low": cmp["ci_low"],
                      "ci_high": cmp["ci_high"]}
        searches = search_cell(g)
        lines.append(f"| {first['type']} | {first['kind']} | {first['allocator']} | {searches} | "
                     f"{first['selection']} | {first['init']} | "
                     f"{os.path.basename(first['start_ckpt'] or '?')} | {first['start_sparsity']:.4f} → "
                     f"{first['final_sparsity']:.4f} | {start_acc:.2f} | {fmt_mean_std(accs)} | {ref} | {delta} | "
                     f"{direct_cell} | {vs_direct} | {format_mean_flops([r['training_flops'] for r in g])} | "
                     f"{first['finetune_steps']} | {seeds} (n={len(g)}) |")
        vals = [r["val_acc"] for r in g]
        records.append({"type": first["type"], "kind": first["kind"], "allocator": first["allocator"], "search": searches,
                        "selection": first["selection"],
                        "init": first["init"], "start_ckpt": first["start_ckpt"],
                        "start_sparsity": first["start_sparsity"], "final_sparsity": first["final_sparsity"],
                        "n": len(g), "seeds": [r["seed"] for r in g], f"{metric}_mean": mean_std(accs)[0],
                        f"{metric}_std": mean_std(accs)[1], "val_acc_mean": mean_std(vals)[0], **record})
        label = f"{first['type']} {first['kind']} {first['allocator']}"
        points.setdefault(label, []).append((first["final_sparsity"], mean_std(accs)[0]))
        arrows.append(((first["start_sparsity"], start_acc), (first["final_sparsity"], mean_std(accs)[0])))
    if not groups:
        lines.append("| (no regrowth run found) ||||||||||||||||| ")
    out = args.out or os.path.join(m_dir, "report.md")
    arm_records, compute_png = [], None
    if args.arms:
        arm_rows = {label: load_arm(paths) for label, paths in (parse_arm(s) for s in args.arms)}
        arm_lines, arm_records = arms_section(arm_rows, args.baseline_arms)
        compute_png = plot_accuracy_vs_compute(
            {label: [(r["training_flops"], r[metric]) for r in rows] for label, rows in arm_rows.items()},
            os.path.splitext(out)[0] + "_compute.png", f"{args.m_name}: {metric.replace('_', ' ')} vs training compute")
        lines += ["", "## Arms (mean ± std over seeds; differences of the means, Welch's p, bootstrap 95% interval)",
                  ""] + arm_lines + ["", f"![accuracy vs training compute]({os.path.basename(compute_png)})", ""]
    direct_points = [(sp, *mean_std([r[metric] for r in rows])) for (_, sp), rows in sorted(direct.items(),
                                                                                         key=lambda kv: kv[0][1])]
    png = plot_report({name: [(r["sparsity"], r[metric]) for r in rows] for name, rows in curves.items()},
                      points, arrows, os.path.splitext(out)[0] + ".png", f"{args.m_name}: {metric.replace('_', ' ')}",
                      direct=direct_points)
    lines += ["", f"![accuracy vs sparsity]({os.path.basename(png)})", ""]
    with open(out, "w") as fh:
        fh.write("\n".join(lines))
    # the best allocator per start (highest mean validation accuracy, never test): what a study chains on
    best = {}
    for r in records:
        if r["val_acc_mean"] > best.get(r["start_ckpt"], {}).get("val_acc_mean", -1):
            best[r["start_ckpt"]] = r
    write_json(os.path.splitext(out)[0] + ".json",
               {"metric": metric, "groups": records, "best_allocator": {k: v["allocator"] for k, v in best.items()},
                "arms": arm_records})
    log("\n".join(lines))
    log(f"wrote {out} and {png}")
    return {"curves": curves, "groups": groups, "records": records, "arms": arm_records, "path": out, "figure": png,
            "compute_figure": compute_png}


if __name__ == "__main__":
    cli.run(main, get_args_parser())
