"""Layer feature maps and SSIM feature drift: which layers did pruning damage most?

For every masked Conv2d the raw conv output (before BatchNorm) is recorded with forward hooks,
summed over channels (signed), L1-normalised per sample, averaged over the samples of
`num_batches` batches, and min-max normalised to [0, 1] (left as is when constant, e.g. 1x1 maps).
The dense and the sparse model's maps are then compared with scikit-image's
`structural_similarity` (data_range 1, uniform window of min(7, H, W) made odd); maps with a
window under 3 (2x2 and 1x1) use the cosine similarity of the flattened maps instead. Linear layers
have no map and get no score. This is the published construction (reference §10.3-10.5).

Layers with SSIM <= threshold form the regrowth search space, ordered by ascending SSIM (lower SSIM =
more drift = higher priority); if none qualifies, the lowest-SSIM layer alone.
"""
import numpy as np
import torch

from utils.masks import masked_modules
from utils.runtime import Precision


class FeatureMapRecorder:
    """Forward hooks that accumulate the published attention map of each named module.

    Use as a context manager; the hooks are removed on exit (the published extractor left them
    attached, copying every conv output to the CPU on every later forward). The sums stay on the
    model's device, in float64, and `maps()` copies all layers to the host at once: no hook waits
    for the device, so the forwards of a pass queue up without a sync per layer and batch.
    """

    def __init__(self, model, names):
        self.model, self.names = model, list(names)
        self.sums, self.counts, self.handles = {}, {}, []

    def _hook(self, name):
        def record(_module, _inputs, output):
            if output.dim() != 4:  # Linear layers (and anything else) have no spatial map
                return
            a = output.detach().float().sum(1)  # (B, H, W), signed channel sum
            norm = a.abs().flatten(1).sum(1).clamp_min(1e-12)
            a = a / norm[:, None, None]
            self.sums[name] = self.sums.get(name, 0) + a.sum(0).double()
            self.counts[name] = self.counts.get(name, 0) + a.shape[0]

        return record

    def __enter__(self):
        modules = dict(self.model.named_modules())
        for name in self.names:
            self.handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def maps(self):
        """{name: (H, W) float64 numpy map}, averaged over samples and min-max normalised."""
        out = {}
        if not self.sums:
            return out
        names = list(self.sums)
        flat = torch.cat([self.sums[n].flatten() for n in names]).cpu()  # the one device-to-host copy
        totals = flat.split([self.sums[n].numel() for n in names])
        for name, total in zip(names, totals):
            m = total.view(self.sums[name].shape) / self.counts[name]
            lo, hi = m.min(), m.max()
            if hi > lo:
                m = (m - lo) / (hi - lo + 1e-8)
            out[name] = m.numpy()
        return out


@torch.no_grad()
def layer_feature_maps(model, loader, names, device, num_batches=64, precision=Precision()):
    """Feature maps of the named modules of `model` on the first `num_batches` batches of `loader`."""
    was_training = model.training
    model.eval()
    with FeatureMapRecorder(model, names) as rec:
        for i, (x, _) in enumerate(loader):
            if i >= num_batches:
                break
            x = x.to(device, non_blocking=True)
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device):
                model(x)
    model.train(was_training)
    return rec.maps()


def ssim_window(h, w):
    """The published window: min(7, H, W), minus one if even."""
    win = min(7, h, w)
    return win - 1 if win % 2 == 0 else win


def cosine_similarity(a, b):
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 1e-8 else 0.0


def map_similarity(a, b):
    """SSIM of two 2-D maps (skimage, published window), cosine similarity where the window is under 3."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"feature maps differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 2:
        return cosine_similarity(a, b)
    win = ssim_window(*a.shape)
    if win < 3:
        return cosine_similarity(a, b)
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


def layer_ssim(dense_model, sparse_model, loader, device, names=None, num_batches=64, precision=Precision()):
    """{layer: SSIM between the dense and sparse model's maps} for the masked conv layers of the sparse model."""
    names = names or [n for n, _ in masked_modules(sparse_model)]
    dense_maps = layer_feature_maps(dense_model, loader, names, device, num_batches, precision)
    sparse_maps = layer_feature_maps(sparse_model, loader, names, device, num_batches, precision)
    return {n: map_similarity(dense_maps[n], sparse_maps[n]) for n in names if n in dense_maps and n in sparse_maps}


def select_search_space(ssim_scores, layer_names, threshold, include_linear=False):
    """Layers to regrow into, ordered by ascending SSIM.

    layer_names: every masked layer (module order). Layers with a score <= threshold qualify; if
    none does, the lowest-scoring layer alone. Layers without a score (Linear) join at the end only
    with include_linear. Returns (ordered names, used_fallback).
    """
    scored = [(ssim_scores[n], n) for n in layer_names if n in ssim_scores]
    chosen = [n for s, n in sorted(scored) if s <= threshold]
    fallback = False
    if not chosen and scored:
        chosen, fallback = [min(scored)[1]], True
    if include_linear:
        chosen += [n for n in layer_names if n not in ssim_scores]
    return chosen, fallback


def format_ssim_table(ssim_scores, layer_names, selected, capacities=None):
    """One line per masked layer: SSIM (or '-' for Linear), capacity, and a mark on selected layers."""
    width = max(len(n) for n in layer_names)
    lines = []
    for n in layer_names:
        s = ssim_scores.get(n)
        cap = f" cap {capacities[n]:>9,}" if capacities and n in capacities else ""
        mark = f"  <- search #{selected.index(n) + 1}" if n in selected else ""
        lines.append(f"  {n:<{width}}  ssim {'   -   ' if s is None else f'{s:+.4f}'}{cap}{mark}")
    return "\n".join(lines)
