"""Saliency of every weight of chosen layers: mean over batches of (dL/dθ)² · θ², on the dense model.

One pass over the loader (the published code uses one epoch of the augmented training loader), in
eval mode (BatchNorm running statistics, no dropout), one backward per batch for all target layers
at once. Only the target weights are differentiated, so models with parameters that get no gradient
work (the published one-shot script crashed on EfficientNet there). The result is a per-weight
Fisher-diagonal-like estimate scaled by the squared magnitude; `filter_saliency` reduces it per
output filter for structured regrowth.
"""
import torch
import torch.nn.functional as F

from utils.masks import has_mask
from utils.progress import bar
from utils.runtime import Precision


def _weight_param(module):
    return module.weight_orig if has_mask(module) else module.weight


def _batch_losses(model, loader, device, max_batches, precision, desc):
    """The mean cross-entropy of each of the first `max_batches` batches, in eval mode (restored after).

    The loader's epoch is set to 0, so the same batches come whenever a pass runs (results are cached by
    content)."""
    was_training = model.training
    model.eval()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    try:
        for i, (x, y) in enumerate(bar(loader, total=total, desc=desc, leave=False, unit="batch")):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device):
                yield F.cross_entropy(model(x).float(), y)
    finally:
        model.train(was_training)


def weight_saliency(model, loader, layer_names, device, max_batches=None, precision=Precision(), with_taylor=False):
    """{layer: tensor shaped like its weight} of mean_b (dL_b/dθ)² θ² (CPU, float32).

    With with_taylor=True also returns {layer: mean_b |dL_b/dθ · θ|} (first-order Taylor), from the same pass.
    θ is the effective weight (weight_orig * mask for a masked model, which is the dense value when
    the mask is all ones).
    """
    modules = dict(model.named_modules())
    targets = [modules[n] for n in layer_names]
    params = [_weight_param(m) for m in targets]
    weights = [(p * m.weight_mask if has_mask(m) else p).detach().float() for p, m in zip(params, targets)]
    fisher = [torch.zeros_like(w) for w in weights]
    taylor = [torch.zeros_like(w) for w in weights] if with_taylor else None
    n_batches = 0
    for loss in _batch_losses(model, loader, device, max_batches, precision, "saliency"):
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for j, g in enumerate(grads):
            if g is None:
                continue
            g = g.detach().float()  # for a masked module autograd already zeroed the masked entries
            fisher[j].add_(g.square() * weights[j].square())
            if with_taylor:
                taylor[j].add_((g * weights[j]).abs())
        n_batches += 1
    scale = 1.0 / max(n_batches, 1)
    result = {n: (f * scale).cpu().contiguous() for n, f in zip(layer_names, fisher)}
    if with_taylor:
        return result, {n: (t * scale).cpu().contiguous() for n, t in zip(layer_names, taylor)}
    return result


def filter_saliency(per_weight):
    """Sum a per-weight saliency over each output filter (dim 0): {layer: (out_channels,) tensor}."""
    return {n: s.reshape(s.shape[0], -1).sum(1) for n, s in per_weight.items()}


def layer_mean_saliency(saliency):
    return {n: float(s.mean()) for n, s in saliency.items()}


def weight_gradient(model, loader, layer_names, device, max_batches=None, precision=Precision()):
    """{layer: |dL/dθ|} of the effective weights of chosen layers, L the mean loss over the batches (CPU).

    For a masked model the gradient is taken with respect to weight_orig * mask, so pruned positions get
    the gradient they would receive if they were alive: RigL's growth criterion. Eval mode, as the saliency.
    """
    modules = dict(model.named_modules())
    targets = [modules[n] for n in layer_names]
    total = [None] * len(targets)
    n_batches = 0
    for loss in _batch_losses(model, loader, device, max_batches, precision, "gradient"):
        # the pruning hook recomputed module.weight (= weight_orig * mask) in this forward: differentiate it
        grads = torch.autograd.grad(loss, [m.weight for m in targets], allow_unused=True)
        for j, g in enumerate(grads):
            if g is not None:
                g = g.detach().float()
                total[j] = g if total[j] is None else total[j].add_(g)
        n_batches += 1
    scale = 1.0 / max(n_batches, 1)
    return {n: (t * scale).abs().cpu().contiguous() if t is not None else torch.zeros_like(m.weight, device="cpu")
            for n, t, m in zip(layer_names, total, targets)}
