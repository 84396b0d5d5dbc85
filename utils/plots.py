"""Figures written next to each stage's outputs (PNG, matplotlib's Agg backend, no display needed)."""
import os



class _Pyplot:
    """matplotlib.pyplot on the Agg backend, imported at the first figure drawn: most stage processes (a study
    or the tests start hundreds) draw none, and the import costs 0.34 s of a 2.7 s script start (measured with
    python -X importtime)."""

    def __getattr__(self, name):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot

        return getattr(matplotlib.pyplot, name)


plt = _Pyplot()


def _save(fig, path):
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the main process writes
        plt.close(fig)
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _sparsity_axis(ax, sparsities, label="sparsity (fraction of prunable weights removed)"):
    """Logit scale spreads 0.9 / 0.99 / 0.999 evenly, which is where pruning curves live."""
    finite = [s for s in sparsities if 0 < s < 1]
    if finite and len(finite) == len(sparsities):
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

        ax.set_xscale("logit")
        lo, hi = min(finite), max(finite)
        ticks = [t for t in (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
                 if lo * 0.9 <= t <= 1 - (1 - hi) * 0.9] or [lo, hi]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        label += ", logit scale"
    ax.set_xlabel(label)


def plot_accuracy_vs_sparsity(series, path, title="accuracy vs sparsity", ylabel="accuracy (%)", points=None,
                              arrows=None, xlabel="sparsity (fraction of prunable weights removed)"):
    """Lines of accuracy against sparsity.

    series: {label: [(sparsity, accuracy), ...]} drawn as lines with markers;
    points: {label: [(sparsity, accuracy), ...]} drawn as single markers (e.g. regrown models);
    arrows: [((s0, a0), (s1, a1))] drawn from a start to an end point.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    all_s = []
    for label, pts in series.items():
        pts = sorted(pts)
        if not pts:
            continue
        xs, ys = zip(*pts)
        all_s += xs
        ax.plot(xs, ys, marker="o", ms=4, label=label)
    for label, pts in (points or {}).items():
        if pts:
            xs, ys = zip(*pts)
            all_s += xs
            ax.scatter(xs, ys, marker="*", s=120, zorder=5, label=label)
    for (s0, a0), (s1, a1) in arrows or []:
        ax.annotate("", xy=(s1, a1), xytext=(s0, a0), arrowprops=dict(arrowstyle="->", color="0.3"))
    _sparsity_axis(ax, all_s, xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(history, path, title="training"):
    """Train/val accuracy and loss per epoch from a list of dicts with those keys."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [h["epoch"] for h in history]
    for key, ax in (("acc", ax1), ("loss", ax2)):
        for split in ("train", "val"):
            k = f"{split}_{key}"
            if history and k in history[0]:
                ax.plot(ep, [h[k] for h in history], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_search_curves(rows, path, title="regrowth search"):
    """Reward (and best so far), val accuracy vs reference, and entropy / beta per episode."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ep = [r["episode"] for r in rows]
    axes[0].plot(ep, [r["reward"] for r in rows], ".", alpha=0.6, label="reward")
    axes[0].plot(ep, [r["best_reward"] for r in rows], "-", label="best")
    window = max(5, len(rows) // 20)
    if len(rows) >= 2 * window:  # a policy that learns shows as a rising running mean
        rewards = [r["reward"] for r in rows]
        running = [sum(rewards[i - window:i]) / window for i in range(window, len(rewards) + 1)]
        axes[0].plot(ep[window - 1:], running, "-", label=f"mean of the last {window}")
    axes[0].set_ylabel("reward")
    if rows and "restored_share" in rows[0]:  # a training-free proxy: what it scored
        axes[1].plot(ep, [r["restored_share"] for r in rows], ".", alpha=0.6, label="restored share (proxy)")
        axes[1].set_ylabel("share")
    else:
        axes[1].plot(ep, [r["val_acc"] for r in rows], ".", alpha=0.6, label="val acc after the proxy")
        axes[1].plot(ep, [r["reference_acc"] for r in rows], "-", label="reference")
        axes[1].set_ylabel("accuracy (%)")
    if rows and "entropy" in rows[0]:
        axes[2].plot(ep, [r["entropy"] for r in rows], label="policy entropy")
        axes[2].plot(ep, [r["beta"] for r in rows], label="entropy weight beta")
    else:
        axes[2].text(0.5, 0.5, "no controller (fixed allocator)", ha="center", va="center", transform=axes[2].transAxes)
    for ax in axes:
        ax.set_xlabel("episode")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_allocation(names, allocation, capacities, ssim, path, title="allocation"):
    """Per search layer: capacity and regrown count (log scale bars) with the layer's SSIM on a twin axis."""
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4))
    x = list(range(len(names)))
    ax.bar(x, [capacities[n] for n in names], color="0.85", label="capacity (pruned weights)")
    ax.bar(x, [allocation.get(n, 0) for n in names], color="tab:blue", label="regrown")
    ax.set_yscale("symlog")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("weights")
    ax2 = ax.twinx()
    ax2.plot(x, [ssim.get(n, float("nan")) for n in names], "o-", color="tab:red", label="SSIM")
    ax2.set_ylabel("SSIM (dense vs sparse)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title(title + " (layers in search order: ascending SSIM)")
    return _save(fig, path)


def plot_ssim_gain(rows, path, title, corr=None):
    """Scatter of SSIM against accuracy gain (mean ± std over seeds) with a least-squares fit line."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x = [r["ssim"] for r in rows]
    y = [r["gain_mean"] for r in rows]
    ax.errorbar(x, y, yerr=[r["gain_std"] for r in rows], fmt="o", capsize=3, label="layer (mean ± std over seeds)")
    for r in rows:
        ax.annotate(r["layer"], (r["ssim"], r["gain_mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if len(rows) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.linspace(min(x), max(x), 50)
        ax.plot(xs, slope * xs + intercept, "--", color="tab:red", label=f"fit: gain = {slope:.2f}·SSIM + {intercept:.2f}")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("SSIM of the layer's feature map (dense vs sparse)")
    ax.set_ylabel("val accuracy gain from regrowing only this layer (pp)")
    if corr:
        title += (f"\nPearson r={corr['pearson_r']:.2f} (p={corr['pearson_p']:.2g}), "
                  f"Spearman ρ={corr['spearman_rho']:.2f} (p={corr['spearman_p']:.2g}), n={corr['n']}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_bars(labels, values, path, title, ylabel):
    """One bar per label (e.g. SSIM per layer)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(labels) + 2), 3.8))
    ax.bar(range(len(labels)), values, color="tab:blue")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_report(curves, points, arrows, path, title, direct=None):
    """Pruning curves and regrown points: weights (unstructured) on the left, filters (structured) on the right
    (a panel only where there is something to draw).

    curves: {folder: [(sparsity, acc)]}; points: {label: [(sparsity, acc)]} whose label says 'weights' or
    'filters'; arrows: [((s0, a0), (s1, a1))] from each run's start to its result; direct: [(sparsity, mean,
    std)] of direct pruning runs (drawn with error bars on the weights panel).
    """
    panels = [("weights", "weight sparsity", lambda n: "structured" not in n),
              ("filters", "channel (filter) sparsity", lambda n: "structured" in n)]
    used = [pn for pn in panels if any(pn[2](n) and pts for n, pts in curves.items())
            or any(pn[0] in lab and pts for lab, pts in points.items()) or (pn[0] == "weights" and direct)]
    panels = used or panels[:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False)
    for ax, (unit, xlabel, is_curve) in zip(axes[0], panels):
        xs = []
        for name, pts in curves.items():
            if is_curve(name) and pts:
                pts = sorted(pts)
                ax.plot(*zip(*pts), marker="o", ms=3, label=f"pruning: {name}")
                xs += [p[0] for p in pts]
        for label, pts in points.items():
            if unit in label and pts:
                ax.scatter(*zip(*pts), marker="*", s=130, zorder=5, label=f"regrown: {label}")
                xs += [p[0] for p in pts]
        if direct and unit == "weights":
            sp, mean, std = zip(*direct)
            ax.errorbar(sp, mean, yerr=std, fmt="D", ms=6, color="black", capsize=3, zorder=6,
                        label="direct pruning, same finetune (mean ± std)")
            xs += list(sp)
        for (s0, a0), (s1, a1) in arrows:
            if any(unit in lab and (s1, a1) in pts for lab, pts in points.items()):
                ax.annotate("", xy=(s1, a1), xytext=(s0, a0), arrowprops=dict(arrowstyle="->", color="0.4"))
        _sparsity_axis(ax, xs, xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{title} — {unit}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {unit} runs", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_knees(xs, ys, marks, dense_acc, tolerance, path, title, xlabel):
    """A pruning curve with its knees marked and the dense-minus-tolerance band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(xs, ys, "o-", ms=4, label="pruning curve")
    styles = {"residual": ("X", "tab:red"), "two_segment": ("s", "tab:orange"), "tolerance": ("D", "tab:green")}
    for name, idx in marks.items():
        if idx is not None:
            marker, color = styles.get(name, ("o", "k"))
            ax.scatter([xs[idx]], [ys[idx]], marker=marker, s=110, color=color, zorder=5,
                       label=f"knee: {name} ({xs[idx]:.4f})")
    if dense_acc is not None:
        ax.axhline(dense_acc, color="0.4", lw=0.8, label=f"dense {dense_acc:.2f}")
        ax.axhspan(dense_acc - tolerance, dense_acc, color="tab:green", alpha=0.1, label=f"within {tolerance:g} pt")
    _sparsity_axis(ax, list(xs), xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_accuracy_vs_compute(series, path, title, ylabel="accuracy (%)", xlabel="training FLOPs after pretraining"):
    """One marker per arm at its mean training compute (log axis) and mean accuracy, with std error bars both ways.

    series: {label: [(flops, acc)] per seed}.
    """
    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    markers = "osD^v<>pPX*h"
    for i, (label, pts) in enumerate(series.items()):
        if not pts:
            continue
        fl, acc = zip(*pts)
        mf, ma = sum(fl) / len(fl), sum(acc) / len(acc)
        sf = (sum((f - mf) ** 2 for f in fl) / (len(fl) - 1)) ** 0.5 if len(fl) > 1 else 0.0
        sa = (sum((a - ma) ** 2 for a in acc) / (len(acc) - 1)) ** 0.5 if len(acc) > 1 else 0.0
        ax.scatter(fl, acc, marker=markers[i % len(markers)], s=14, alpha=0.35, color=f"C{i % 10}")
        ax.errorbar([mf], [ma], xerr=[sf], yerr=[sa], fmt=markers[i % len(markers)], ms=7, capsize=3,
                    color=f"C{i % 10}", label=f"{label} (n={len(pts)})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def plot_finetune_curve(evals, path, title, marks=None):
    """Validation accuracy of a finetune against its steps: each evaluation, and the best so far (what a run
    stopped there keeps). evals: rows with "steps" and "val_acc"; marks: {label: steps} drawn as vertical lines."""
    steps = [r["steps"] for r in evals]
    acc = [r["val_acc"] for r in evals]
    best = [max(acc[: i + 1]) for i in range(len(acc))]
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    ax.plot(steps, acc, marker="o", ms=3, alpha=0.6, label="val accuracy at the evaluation")
    ax.plot(steps, best, drawstyle="steps-post", lw=2, label="best so far (the state kept)")
    for i, (label, at) in enumerate((marks or {}).items()):
        ax.axvline(at, color=f"C{i + 2}", ls="--", lw=1, label=label)
    ax.set_xlabel("finetune steps")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
