"""Small statistics used by the analysis scripts: correlations with p-values, mean ± std."""
import math
import warnings

import numpy as np


def correlations(x, y):
    """Pearson and Spearman correlation of two equal-length sequences, with two-sided p-values.

    Returns NaNs when fewer than 3 points or a constant input make a correlation undefined.
    """
    from scipy import stats  # 0.49 s to import: only the processes that compare or correlate pay it
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out = {"n": int(len(x)), "pearson_r": math.nan, "pearson_p": math.nan, "spearman_rho": math.nan,
           "spearman_p": math.nan}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    r, p = stats.pearsonr(x, y)
    rho, sp = stats.spearmanr(x, y)
    out.update(pearson_r=float(r), pearson_p=float(p), spearman_rho=float(rho), spearman_p=float(sp))
    return out


def mean_std(values):
    """(mean, sample std) of a sequence; std is 0 for a single value."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt_mean_std(values, digits=2):
    m, s = mean_std(values)
    return f"{m:.{digits}f}" if len(values) < 2 else f"{m:.{digits}f} ± {s:.{digits}f}"


def bootstrap_spearman(x, y, resamples=2000, level=0.95, seed=0):
    """Percentile bootstrap interval of Spearman's rho: pairs resampled with replacement.

    Resamples in which either side is constant (rho undefined) are dropped. Returns (low, high).
    """
    from scipy import stats  # 0.49 s to import: only the processes that compare or correlate pay it
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(int(resamples)):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
            continue
        rhos.append(stats.spearmanr(x[i], y[i])[0])
    if not rhos:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    return float(np.percentile(rhos, tail)), float(np.percentile(rhos, 100 - tail))


def welch_t_test(a, b):
    """Welch's t-test of mean(a) != mean(b) (unequal variances): (t, two-sided p); NaNs below 2 values each."""
    from scipy import stats  # 0.49 s to import: only the processes that compare or correlate pay it
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():  # near-identical samples: scipy warns of precision loss, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        t, p = stats.ttest_ind(a, b, equal_var=False)
    return float(t), float(p)


def first_vs_last(values, window=50):
    """Did a sequence (a search's rewards) rise? Mean / std of its first and last `window` values (at most
    half the sequence each, so the two never overlap) and Welch's t-test of last vs first."""
    values = [float(v) for v in values]
    w = min(int(window), len(values) // 2)
    if w < 2:
        return {"window": w}
    first, last = values[:w], values[-w:]
    (m0, s0), (m1, s1) = mean_std(first), mean_std(last)
    t, p = welch_t_test(last, first)
    return {"window": w, "first_mean": m0, "first_std": s0, "last_mean": m1, "last_std": s1, "welch_t": t,
            "welch_p": p}


def bootstrap_mean_difference(a, b, resamples=10000, level=0.95, seed=0):
    """Percentile bootstrap interval of mean(a) - mean(b): each group resampled with replacement on its own.

    With n = 3 per group the interval is coarse (few distinct resamples); it is reported beside Welch's p,
    not instead of it. Returns (low, high); NaNs when a group is empty.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, len(a), (int(resamples), len(a)))].mean(1)
             - b[rng.integers(0, len(b), (int(resamples), len(b)))].mean(1))
    tail = 100 * (1 - level) / 2
    return float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail))


def compare_groups(a, b, resamples=10000, seed=0):
    """mean(a) - mean(b), Welch's two-sided p (NaN below 2 values a side) and the bootstrap 95% interval."""
    diff = mean_std(a)[0] - mean_std(b)[0]
    _, p = welch_t_test(a, b)
    low, high = bootstrap_mean_difference(a, b, resamples, seed=seed)
    return {"diff": diff, "welch_p": p, "ci_low": low, "ci_high": high, "n_a": len(a), "n_b": len(b)}


def fmt_difference(c, digits=2):
    """'+1.23 (p = 0.041, 95% CI [+0.40, +2.10])' for a compare_groups result."""
    p = "p = n/a" if math.isnan(c["welch_p"]) else f"p = {c['welch_p']:.2g}"
    return (f"{c['diff']:+.{digits}f} ({p}, 95% CI [{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}])")
