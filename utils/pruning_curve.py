"""The pruning curve: accuracy against sparsity from a folder of pruned checkpoints, interpolated.

Iterative regrowth compares a regrown model with the pruned model at the same sparsity. The
curve is read from what the pruning stage recorded in each checkpoint (sparsity and validation
accuracy; tensors are memory-mapped, not read). Checkpoints without recorded metrics (the
published raw state_dicts) are evaluated through `evaluate_fn(path)` when one is given.
Interpolation is piecewise linear in sparsity and clamps outside the measured range.
"""
import glob
import os
from dataclasses import dataclass

from utils.checkpoints import checkpoint_metrics
from utils.errors import BridgeError, CheckpointError
from utils.progress import log


@dataclass
class PruningCurve:
    points: list   # [(sparsity, accuracy)] sorted by sparsity
    metric: str
    sources: list

    def __call__(self, sparsity):
        pts = self.points
        if sparsity <= pts[0][0]:
            return pts[0][1]
        if sparsity >= pts[-1][0]:
            return pts[-1][1]
        for (s1, a1), (s2, a2) in zip(pts, pts[1:]):
            if s1 <= sparsity <= s2:
                return a1 + (sparsity - s1) / (s2 - s1 + 1e-12) * (a2 - a1)
        return pts[-1][1]

    def describe(self):
        return (f"pruning curve ({self.metric}): {len(self.points)} points, sparsity "
                f"{self.points[0][0]:.4f}..{self.points[-1][0]:.4f}, accuracy "
                f"{min(a for _, a in self.points):.2f}..{max(a for _, a in self.points):.2f}")


def load_pruning_curve(folder, metric="val_acc", evaluate_fn=None):
    """PruningCurve from every *.pth in `folder` (sorted by sparsity; dense/unreadable files skipped)."""
    if not os.path.isdir(folder):
        raise BridgeError(f"baseline folder not found: {folder} (point --baseline_dir at a pruning output folder)")
    points, sources = [], []
    for path in sorted(glob.glob(os.path.join(folder, "*.pth"))):
        if os.path.basename(path).startswith((".tmp", "search_")):
            continue
        try:
            sp, metrics = checkpoint_metrics(path)
        except CheckpointError as exc:
            log(f"  skipped {path}: {exc}")
            continue
        acc = metrics.get(metric)
        if acc is None and evaluate_fn is not None:
            acc = evaluate_fn(path)
        if acc is None or sp <= 0:
            continue
        points.append((sp, float(acc)))
        sources.append(path)
    if not points:
        raise BridgeError(f"no pruned checkpoint with a recorded {metric} in {folder}")
    order = sorted(range(len(points)), key=lambda i: points[i][0])
    return PruningCurve([points[i] for i in order], metric, [sources[i] for i in order])
