"""The small decisions of the study scripts (experiments/cifar10_cpu.sh, cifar10_converged.sh), read from the
JSON files their stages write.

Each subcommand prints one answer on stdout for the shell script to read:

    starts BOUNDARY_JSON                 "sparsity checkpoint target" per regrowth start: the level just past
                                         the curve's knee (when it is not the sparsest) and the sparsest level,
                                         each regrowing to the next less sparse level of the curve
    step SPARSITY TARGET                 the regrowth step SPARSITY - TARGET (rounded, no float noise)
    best-allocator REPORT_JSON START     the allocator with the best mean validation accuracy from START
    single-layer-start BOUNDARY_JSON     "sparsity checkpoint" of the knee, or of the first start without one
    knee-line KNEE_JSON LABEL            one line of the three knee rules for budgets.md
    knee-start BOUNDARY_JSON             "start path knee" : the level just past the knee, its checkpoint, the knee
    choose-n EVALS_JSONL N_MAX [GAIN]    "N rule gain": the smallest evaluated step count n whose doubling adds under
                                         GAIN (1) points of best-so-far validation accuracy, else the largest n <= N_MAX
                                         whose doubling the run covers; rule = converged | time-limited
    calibration-figure EVALS_JSONL N OUT TITLE   the calibration curve with N and 2N marked
    correlation-line CORRELATIONS_JSON   SSIM vs gain correlations for budgets.md
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from the shell


def _load(path):
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def regrowth_starts(boundary):
    """[(sparsity, path, target sparsity)], least sparse start first."""
    levels = sorted(boundary["levels"], key=lambda r: r["sparsity"])
    starts = [levels[-1]]
    past = boundary.get("just_past_knee")
    if past and past["sparsity"] < levels[-1]["sparsity"]:
        starts.insert(0, next(r for r in levels if r["sparsity"] == past["sparsity"]))
    out = []
    for s in starts:
        below = [r for r in levels if r["sparsity"] < s["sparsity"]]
        if below:
            out.append((round(s["sparsity"], 4), s["path"], round(below[-1]["sparsity"], 4)))
    return out


def best_allocator(report, start_path):
    best = report["best_allocator"]
    return next(a for k, a in best.items() if os.path.abspath(k) == os.path.abspath(start_path))


def single_layer_start(boundary):
    knee = boundary["knee"]
    if knee:
        return round(knee["sparsity"], 4), knee["path"]
    return regrowth_starts(boundary)[0][:2]


def knee_line(knees, label):
    fmt = lambda k: "none" if k is None else f"{k['sparsity']:.4f} ({k['val_acc']:.2f})"  # noqa: E731
    return f"  {label:>15}: " + ", ".join(f"{n} {fmt(knees['knees'][n])}" for n in ("two_segment", "residual", "tolerance"))


def knee_start(boundary):
    """(start sparsity, start path, knee sparsity): the level just past the knee regrows to the knee."""
    knee, past = boundary.get("knee"), boundary.get("just_past_knee")
    if not knee or not past or past["sparsity"] <= knee["sparsity"]:
        raise SystemExit("the curve has no knee with a sparser level past it: add sparser levels")
    return round(past["sparsity"], 4), past["path"], round(knee["sparsity"], 4)


def best_so_far(evals):
    """{steps: best validation accuracy of the evaluations up to there}."""
    out, best = {}, -math.inf
    for r in sorted(evals, key=lambda r: r["steps"]):
        best = max(best, r["val_acc"])
        out[r["steps"]] = best
    return out


def choose_n(evals, n_max, gain=1.0):
    """(N, rule, gain of doubling N) from a calibration finetune's evaluations (see the module docstring)."""
    best = best_so_far(evals)
    doubled = [n for n in sorted(best) if 2 * n in best]
    if not doubled:
        raise SystemExit("the calibration run has no evaluation at twice another's steps: run it longer")
    for n in doubled:
        if best[2 * n] - best[n] < gain:
            if n <= n_max:
                return n, "converged", best[2 * n] - best[n]
            break
    n = max([m for m in doubled if m <= n_max] or doubled[:1])
    return n, "time-limited", best[2 * n] - best[n]


def correlation_line(c):
    return (f"n = {c['n']} layers, Pearson r = {c['pearson_r']:+.3f} (p = {c['pearson_p']:.3g}), "
            f"Spearman rho = {c['spearman_rho']:+.3f} (p = {c['spearman_p']:.3g})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("starts").add_argument("boundary")
    step = sub.add_parser("step")
    step.add_argument("sparsity", type=float)
    step.add_argument("target", type=float)
    best = sub.add_parser("best-allocator")
    best.add_argument("report")
    best.add_argument("start")
    sub.add_parser("single-layer-start").add_argument("boundary")
    knee = sub.add_parser("knee-line")
    knee.add_argument("knee_json")
    knee.add_argument("label")
    sub.add_parser("correlation-line").add_argument("correlations")
    sub.add_parser("knee-start").add_argument("boundary")
    cn = sub.add_parser("choose-n")
    cn.add_argument("evals")
    cn.add_argument("n_max", type=int)
    cn.add_argument("gain", type=float, nargs="?", default=1.0)
    cf = sub.add_parser("calibration-figure")
    cf.add_argument("evals")
    cf.add_argument("n", type=int)
    cf.add_argument("out")
    cf.add_argument("title")
    a = p.parse_args(argv)
    if a.cmd == "starts":
        lines = [" ".join(map(str, s)) for s in regrowth_starts(_load(a.boundary))]
    elif a.cmd == "step":
        lines = [str(round(a.sparsity - a.target, 6))]
    elif a.cmd == "best-allocator":
        lines = [best_allocator(_load(a.report), a.start)]
    elif a.cmd == "single-layer-start":
        lines = [" ".join(map(str, single_layer_start(_load(a.boundary))))]
    elif a.cmd == "knee-line":
        lines = [knee_line(_load(a.knee_json), a.label)]
    elif a.cmd == "knee-start":
        lines = [" ".join(map(str, knee_start(_load(a.boundary))))]
    elif a.cmd == "choose-n":
        n, rule, gain = choose_n(_read_jsonl(a.evals), a.n_max, a.gain)
        lines = [f"{n} {rule} {gain:.2f}"]
    elif a.cmd == "calibration-figure":
        from utils.plots import plot_finetune_curve

        lines = [plot_finetune_curve(_read_jsonl(a.evals), a.out, a.title, {f"N = {a.n}": a.n, f"2N = {2 * a.n}": 2 * a.n})]
    else:
        lines = [correlation_line(_load(a.correlations))]
    sys.stdout.write("".join(line + "\n" for line in lines))


if __name__ == "__main__":
    main()
