"""Several pruning curves (prune_results.csv files) in one Markdown table and one figure.

    python experiments/compare_pruning_curves.py --out results/cifar10_structured_taylor \
        --curve "label A=runs/a/resnet20/structured_iterative/prune_results.csv" --curve "label B=..."

A curve may also be typed in as sparsity:test accuracy pairs (`--points "label=0.31:80.3,0.54:74.6"`), for
numbers reported elsewhere. Rows are matched by sparsity rounded to 4 decimals.
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.plots import plot_accuracy_vs_sparsity  # noqa: E402


def read_curve(path):
    """{sparsity: row} of a prune_results.csv."""
    with open(path) as fh:
        return {round(float(r["sparsity"]), 4): r for r in csv.DictReader(fh)}


def parse_points(text):
    return {round(float(s), 4): {"test_acc": a} for s, a in (p.split(":") for p in text.split(","))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curve", action="append", default=[], help="LABEL=path/to/prune_results.csv")
    p.add_argument("--points", action="append", default=[], help="LABEL=s1:acc1,s2:acc2,... (test accuracies)")
    p.add_argument("--out", required=True, help="folder for curves.md and curves.png")
    p.add_argument("--title", default="pruning curves")
    p.add_argument("--xlabel", default="channel sparsity (fraction of conv filters removed)")
    args = p.parse_args(argv)
    curves = {}
    for spec in args.curve:
        label, path = spec.split("=", 1)
        curves[label] = read_curve(path)
    for spec in args.points:
        label, text = spec.split("=", 1)
        curves[label] = parse_points(text)
    os.makedirs(args.out, exist_ok=True)
    levels = sorted({s for c in curves.values() for s in c})
    cell = lambda c, s, k: f"{float(c[s][k]):.2f}" if s in c and c[s].get(k) not in (None, "") else "-"  # noqa: E731
    lines = [f"# {args.title}", "", "| sparsity | " + " | ".join(f"{label} test (val)" for label in curves) + " |",
             "|---|" + "---|" * len(curves)]
    for s in levels:
        lines.append(f"| {s} | " + " | ".join(f"{cell(c, s, 'test_acc')} ({cell(c, s, 'val_acc')})"
                                             for c in curves.values()) + " |")
    with open(os.path.join(args.out, "curves.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    series = {label: [(s, float(r["test_acc"])) for s, r in c.items()] for label, c in curves.items()}
    plot_accuracy_vs_sparsity(series, os.path.join(args.out, "curves.png"), args.title, "test accuracy (%)",
                              xlabel=args.xlabel)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
