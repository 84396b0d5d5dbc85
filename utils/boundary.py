"""Boundary estimation: where the accuracy-sparsity curve breaks, and what a device's budget allows.

Knee (drop point) of a pruning curve, three ways:

* residual: the published rule, fixed. For i = 3 .. n, fit a least-squares line to the first i points
  and flag point i-1 when its absolute residual exceeds 3 x the mean absolute residual of the points
  before it (the published loop stopped at n-1, so the last point was never tested);
* two-segment: the split k minimising the total squared error of two lines fitted to points [0..k]
  and [k..n-1] (the split point belongs to both, each side >= 2 points);
* tolerance: the largest sparsity whose accuracy stays within `tolerance` points of the dense
  accuracy; with several seeds per level, a bootstrap over seeds gives a percentile interval.

Device budgets (utils.boundary.fits): non-zero weights, storage bytes (the tensors of the sparse weight
file `export.py --format sparse` writes, utils.sparse_file: `bitmask`: values + one bit per prunable weight;
`csr`: values + a 4-byte column index per value + 4-byte row pointers; biases and BatchNorm values and
statistics dense), MACs (non-zero for weight pruning, compact for filter pruning) and latency
measured on this machine for compact structured models.
"""
import math
from dataclasses import dataclass

import numpy as np

from utils.masks import has_mask, prunable_modules


def _fit(x, y):
    """Least-squares line through (x, y); returns (slope, intercept, residuals)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.ptp(x) == 0:
        return 0.0, float(y.mean()), y - y.mean()
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept), y - (slope * x + intercept)


def residual_knee(x, y, factor=3.0):
    """Index of the first point whose in-sample residual exceeds factor x the mean residual before it, or None.

    Residuals at floating-point noise level (a perfectly straight stretch) never count as a knee.
    """
    floor = 1e-6 * max(1.0, float(np.ptp(np.asarray(y, float)))) if len(y) else 0.0
    for i in range(3, len(x) + 1):  # i = number of points fitted; the last point (i = n) is tested too
        _, _, res = _fit(x[:i], y[:i])
        res = np.abs(res)
        before = res[: i - 1].mean()
        if res[i - 1] > floor and res[i - 1] > factor * before:
            return i - 1
    return None


def two_segment_knee(x, y):
    """(split index, left slope, right slope) minimising the two lines' total squared error, or None."""
    best = None
    for k in range(1, len(x) - 1):  # each side keeps >= 2 points
        left, right = _fit(x[: k + 1], y[: k + 1]), _fit(x[k:], y[k:])
        sse = float((left[2] ** 2).sum() + (right[2] ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, k, left[0], right[0])
    return None if best is None else best[1:]


def tolerance_knee(x, y, dense_acc, tolerance):
    """Index of the largest sparsity whose accuracy is within `tolerance` points of dense, or None."""
    ok = [i for i in range(len(x)) if y[i] >= dense_acc - tolerance]
    return max(ok, key=lambda i: x[i]) if ok else None


def bootstrap_tolerance(levels, dense_accs, tolerance, samples=2000, seed=0, level=0.95):
    """Percentile interval of the tolerance-rule sparsity, resampling seeds at every level (and the dense runs).

    levels: [(sparsity, [accuracy per seed])] sorted by sparsity. Returns (low, high, point estimate).
    """
    rng = np.random.default_rng(seed)
    xs = [s for s, _ in levels]
    point = tolerance_knee(xs, [np.mean(a) for _, a in levels], np.mean(dense_accs), tolerance)
    draws = []
    for _ in range(samples):
        means = [np.mean(rng.choice(a, size=len(a))) for _, a in levels]
        dense = np.mean(rng.choice(dense_accs, size=len(dense_accs)))
        k = tolerance_knee(xs, means, dense, tolerance)
        draws.append(xs[k] if k is not None else 0.0)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi), (xs[point] if point is not None else None)


@dataclass
class Knees:
    residual: int = None
    two_segment: int = None
    two_segment_slopes: tuple = None
    tolerance: int = None
    tolerance_interval: tuple = None


def find_knees(x, y, dense_acc=None, tolerance=1.0, seeds=None):
    """All three knees of a curve (x sorted ascending). seeds: [(sparsity, [acc per seed])] for the bootstrap."""
    out = Knees(residual=residual_knee(x, y))
    seg = two_segment_knee(x, y)
    if seg:
        out.two_segment, out.two_segment_slopes = seg[0], (seg[1], seg[2])
    if dense_acc is not None:
        out.tolerance = tolerance_knee(x, y, dense_acc, tolerance)
        if seeds and any(len(a) > 1 for _, a in seeds):
            dense_runs = [dense_acc] if not isinstance(dense_acc, (list, tuple)) else dense_acc
            out.tolerance_interval = bootstrap_tolerance(seeds, dense_runs, tolerance)[:2]
    return out


# ------------------------------------------------------------------------------------------------
# device budgets
# ------------------------------------------------------------------------------------------------



def storage_bytes(model, scheme="bitmask", value_bytes=4):
    """Bytes of the tensors in the model's sparse weight file (utils.sparse_file; the file adds its header):
    per masked Conv/Linear weight its alive entries and where they are (bitmask: a bit per entry; csr: a 4-byte
    column per value and 4-byte row pointers); every other parameter and floating buffer (biases, BatchNorm
    affine values and running statistics) dense; the masks of other masked parameters a bit per entry."""
    total = 0
    weights = set()
    for name, m in prunable_modules(model):
        w = m.weight_orig if has_mask(m) else m.weight
        weights.add(f"{name}.weight")
        alive = int(m.weight_mask.sum()) if has_mask(m) else w.numel()
        if scheme == "bitmask":
            total += alive * value_bytes + math.ceil(w.numel() / 8)
        else:
            total += alive * (value_bytes + 4) + (w.shape[0] + 1) * 4
    for key, value in model.state_dict().items():
        base = key[: -len("_orig")] if key.endswith("_orig") else key
        if base in weights or key.endswith("_mask") or not value.is_floating_point():
            continue  # the weights above; masks (counted with their parameter); BatchNorm's batch counter
        total += value.numel() * value_bytes + (math.ceil(value.numel() / 8) if key.endswith("_orig") else 0)
    return total


def bytes_per_weight(scheme="bitmask", value_bytes=4):
    """Extra bytes one regrown weight costs."""
    return value_bytes if scheme == "bitmask" else value_bytes + 4


@dataclass(frozen=True)
class DeviceLimits:
    """A device's budget (None: no limit) and how bytes and latency are counted."""
    max_nonzero_params: int = None
    max_bytes: int = None
    max_macs: float = None
    max_latency_ms: float = None
    storage: str = "bitmask"
    value_bytes: int = 4
    latency_batch: int = 1
    latency_backend: str = "torch"

    def any(self):
        return any(v is not None for v in (self.max_nonzero_params, self.max_bytes, self.max_macs, self.max_latency_ms))

    def fits(self, level):
        """Whether a measured level (a dict with nonzero_params, bytes, macs and, if limited, latency_ms) fits."""
        limits = {"nonzero_params": self.max_nonzero_params, "bytes": self.max_bytes, "macs": self.max_macs,
                  "latency_ms": self.max_latency_ms}
        return all(v is None or level[k] <= v for k, v in limits.items())

    def describe(self):
        return ", ".join(f"{k} <= {v:g}" for k, v in (
            ("non-zero weights", self.max_nonzero_params), (f"bytes ({self.storage})", self.max_bytes),
            ("MACs", self.max_macs),
            (f"latency ms (batch {self.latency_batch}, {self.latency_backend})", self.max_latency_ms))
            if v is not None)


def regrowth_room(start, levels, knee_sparsity, limits, dense_filters=None):
    """How many units may be regrown into the `start` level before a device limit is reached or the knee is passed.

    start, levels: measured levels (see DeviceLimits.fits); weight levels also hold prunable_params and
    max_macs_per_weight (the most MACs one regrown weight can add), filter levels alive_filters. With
    `dense_filters` the units are filters (a filter costs the mean parameters and MACs of a dense filter;
    latency follows the slope to the next less sparse level), else weights. Returns (units, fraction of
    the dense units)."""
    room = []
    if dense_filters:
        per_filter_params = start["prunable_params"] / dense_filters
        per_filter_macs = max(r["macs"] for r in levels) / dense_filters
        if limits.max_nonzero_params is not None:
            room.append(math.floor((limits.max_nonzero_params - start["nonzero_params"]) / per_filter_params))
        if limits.max_bytes is not None:
            room.append(math.floor((limits.max_bytes - start["bytes"]) / (per_filter_params * limits.value_bytes)))
        if limits.max_macs is not None:
            room.append(math.floor((limits.max_macs - start["macs"]) / per_filter_macs))
        if limits.max_latency_ms is not None:
            less_sparse = [r for r in levels if r["sparsity"] < start["sparsity"]]
            if less_sparse:
                prev = max(less_sparse, key=lambda r: r["sparsity"])
                slope = ((prev["latency_ms"] - start["latency_ms"])
                         / max(prev["alive_filters"] - start["alive_filters"], 1))
                room.append(math.floor((limits.max_latency_ms - start["latency_ms"]) / max(slope, 1e-9)))
        total = dense_filters
    else:
        total = start["prunable_params"]
        if limits.max_nonzero_params is not None:
            room.append(limits.max_nonzero_params - start["nonzero_params"])
        if limits.max_bytes is not None:
            room.append(math.floor((limits.max_bytes - start["bytes"])
                                   / bytes_per_weight(limits.storage, limits.value_bytes)))
        if limits.max_macs is not None:  # a regrown weight costs at most its layer's MACs per weight
            room.append(math.floor((limits.max_macs - start["macs"]) / start["max_macs_per_weight"]))
    # rounded first: (0.6 - 0.5) * 100 is 9.999999999999998 in floating point, and one unit would be lost
    to_knee = math.floor(round((start["sparsity"] - knee_sparsity) * total, 6))
    budget = max(0, min(room + [to_knee]))
    return budget, budget / total
