"""Regrowth: turn pruned weights back on, highest saliency first, and initialise them.

Within a layer the k pruned positions (mask 0) with the highest saliency come back (one top-k over
the layer, no per-index loop); their mask becomes 1 and `weight_orig` gets its initial value:

* zero       0 (trainable from there: its gradient is no longer masked)
* kaiming    U(-b, b), b = sqrt(6 / fan_in)           (He uniform, as published)
* xavier     U(-b, b), b = sqrt(6 / (fan_in + fan_out))
* reference  the dense pretrained value at that position (the README's "copy from reference");
             `magnitude` is accepted as its alias (the published `magnitude` silently restored the
             stale, weight-decayed `weight_orig` instead)
"""
import math

import torch

from utils.errors import BridgeError, UnknownChoiceError

INIT_STRATEGIES = ("zero", "kaiming", "xavier", "reference")
INIT_ALIASES = {"magnitude": "reference"}


def canonical_init(name):
    name = INIT_ALIASES.get(name, name)
    if name not in INIT_STRATEGIES:
        raise UnknownChoiceError("init strategy", name, INIT_STRATEGIES + tuple(INIT_ALIASES))
    return name


def fan_in_out(weight):
    """fan_in = size(1) * receptive field, fan_out = size(0) * receptive field (grouped: per group)."""
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def initial_values(strategy, weight, flat_idx, reference=None, generator=None):
    """Initial values of `weight` at the flat positions `flat_idx` under an init strategy."""
    n = flat_idx.numel()
    if strategy == "zero":
        return torch.zeros(n, dtype=weight.dtype)
    if strategy == "reference":
        if reference is None:
            raise BridgeError("init strategy 'reference' needs the dense reference weights")
        return reference.reshape(-1)[flat_idx.cpu()].to(weight.dtype)
    fan_in, fan_out = fan_in_out(weight)
    bound = math.sqrt(6.0 / fan_in) if strategy == "kaiming" else math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(n, generator=generator) * 2 - 1).mul_(bound).to(weight.dtype)


def top_pruned_positions(mask, saliency, k):
    """Flat indices of the k pruned positions (mask == 0) with the highest saliency (ties in topk order)."""
    flat_mask = mask.reshape(-1)
    scores = saliency.reshape(-1).to(torch.float32).clone()
    if scores.numel() != flat_mask.numel():
        raise BridgeError(f"saliency has {scores.numel()} entries but the layer has {flat_mask.numel()} weights")
    scores = scores.to(flat_mask.device)
    pruned = flat_mask == 0
    k = min(int(k), int(pruned.sum().item()))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    scores[~pruned] = float("-inf")
    return torch.topk(scores, k, sorted=True).indices.cpu()


@torch.no_grad()
def regrow_layer(module, saliency, k, init="zero", reference=None, generator=None):
    """Regrow up to k pruned weights of one masked module in place. Returns the flat indices regrown.

    Works in any memory layout: edits go through flat logical copies and `copy_` back.
    """
    init = canonical_init(init)
    idx = top_pruned_positions(module.weight_mask, saliency, k)
    if idx.numel() == 0:
        return idx
    dev = module.weight_mask.device
    mask = module.weight_mask.reshape(-1).clone()
    mask[idx.to(dev)] = 1.0
    module.weight_mask.copy_(mask.view(module.weight_mask.shape))
    orig = module.weight_orig.detach().reshape(-1).clone()
    orig[idx.to(dev)] = initial_values(init, module.weight_orig, idx, reference, generator).to(dev)
    module.weight_orig.copy_(orig.view(module.weight_orig.shape))
    return idx


def apply_allocation(model, allocation, saliency, init="zero", reference_state=None, generator=None):
    """Regrow allocation[layer] weights in each layer. Returns {layer: flat indices regrown}.

    reference_state: {layer: dense weight tensor}, needed for init 'reference'.
    """
    modules = dict(model.named_modules())
    regrown = {}
    for name, k in allocation.items():
        if k <= 0:
            continue
        if name not in modules or not hasattr(modules[name], "weight_mask"):
            raise BridgeError(f"layer {name!r} is not a masked layer of this model")
        ref = reference_state.get(name) if reference_state else None
        regrown[name] = regrow_layer(modules[name], saliency[name], k, init, ref, generator)
    return regrown


def layer_capacities(model, names):
    """{layer: number of pruned weights} — the most a layer can regrow."""
    modules = dict(model.named_modules())
    return {n: int((modules[n].weight_mask == 0).sum().item()) for n in names}


def dense_reference_weights(dense_model, names):
    """{layer: dense weight (CPU)} used by init 'reference'."""
    modules = dict(dense_model.named_modules())
    out = {}
    for n in names:
        m = modules[n]
        w = m.weight_orig * m.weight_mask if hasattr(m, "weight_mask") else m.weight
        out[n] = w.detach().cpu().contiguous()
    return out


class WeightRegrower:
    """Unstructured regrowth of an allocation {layer: weights}: saliency top-k per layer."""

    def __init__(self, saliency, reference_weights, init):
        self.saliency, self.reference, self.init = saliency, reference_weights, canonical_init(init)

    def apply(self, model, allocation, generator=None):
        """Regrow in place; returns ({layer: flat indices}, number of weights regrown)."""
        idx = apply_allocation(model, allocation, self.saliency, self.init, self.reference, generator)
        return idx, sum(int(v.numel()) for v in idx.values())

    def restored_saliency(self, regrown):
        """(saliency of the regrown positions, saliency of every position of the search layers)."""
        restored = sum(float(self.saliency[n].reshape(-1)[i.cpu()].double().sum()) for n, i in regrown.items())
        return restored, sum(float(s.double().sum()) for s in self.saliency.values())

    def sparsity(self, model):
        from utils.masks import model_sparsity

        return model_sparsity(model)
