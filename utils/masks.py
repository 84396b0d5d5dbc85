"""Weight masks: the `torch.nn.utils.prune` reparametrisation as the project's one mask representation.

Every prunable module (each `nn.Conv2d` and `nn.Linear`, biases and BatchNorm excluded) holds a
trainable `weight_orig` and a float 0/1 buffer `weight_mask`; a forward pre-hook computes
`weight = weight_orig * weight_mask`. Pruning and regrowth both edit `weight_mask` in place (the prune
API can only shrink a mask, and it cannot handle channels_last tensors in `global_unstructured`),
so every edit here goes through `reshape`/`copy_`, which works in either memory layout.

Sparsity = zeros in all masks / entries of all masks, over every prunable weight.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from utils.errors import CheckpointError

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def is_prunable(module):
    return isinstance(module, PRUNABLE_TYPES)


def prunable_modules(model):
    """[(name, module)] of every Conv2d / Linear, in `named_modules()` (definition) order."""
    return [(name, m) for name, m in model.named_modules() if is_prunable(m)]


def has_mask(module):
    return hasattr(module, "weight_mask") and hasattr(module, "weight_orig")


def add_masks(model):
    """Give every prunable module an all-ones mask (idempotent). Returns the model."""
    for _, m in prunable_modules(model):
        if not has_mask(m):
            prune.identity(m, "weight")
    return model


def masked_modules(model):
    """[(name, module)] of the prunable modules that carry a mask."""
    return [(n, m) for n, m in prunable_modules(model) if has_mask(m)]


def effective_weight(module):
    """weight_orig * weight_mask for a masked module, the plain weight otherwise (no grad)."""
    if has_mask(module):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def set_mask(module, new_mask):
    """Overwrite a module's mask in place (any layout), and zero nothing else."""
    with torch.no_grad():
        module.weight_mask.copy_(new_mask.reshape(module.weight_mask.shape).to(module.weight_mask.dtype))


def transplant_masks(model, state_dict, source="the mask source"):
    """Give every masked module of `model` the mask `state_dict` holds for it (weights untouched).

    What a mask transplant trains: another run's mask on this model's (dense) weights.
    """
    for name, m in masked_modules(model):
        key = f"{name}.weight_mask"
        if key not in state_dict:
            raise CheckpointError(f"{source} has no mask for layer {name!r}")
        if tuple(state_dict[key].shape) != tuple(m.weight_mask.shape):
            raise CheckpointError(f"{source}: mask of {name!r} is {tuple(state_dict[key].shape)}, the model's "
                                  f"layer is {tuple(m.weight_mask.shape)}")
        set_mask(m, state_dict[key].to(m.weight_mask.device))
    return model


def count_pruned_params(model):
    """(total, surviving, pruned) over every prunable weight; unmasked modules count as fully surviving."""
    total = surviving = 0
    for _, m in prunable_modules(model):
        n = m.weight_orig.numel() if has_mask(m) else m.weight.numel()
        total += n
        surviving += int(m.weight_mask.sum().item()) if has_mask(m) else n
    return total, surviving, total - surviving


def model_sparsity(model):
    """Fraction of prunable weights whose mask is 0."""
    total, _, pruned = count_pruned_params(model)
    return pruned / total if total else 0.0


@dataclass
class LayerStats:
    """One prunable layer's size, survivors and pruned count (= its regrowth capacity)."""

    name: str
    kind: str
    shape: tuple
    total: int
    surviving: int

    @property
    def pruned(self):
        return self.total - self.surviving

    @property
    def capacity(self):
        return self.pruned

    @property
    def sparsity(self):
        return self.pruned / self.total if self.total else 0.0


def layer_table(model):
    """Per-layer LayerStats, in module order."""
    rows = []
    for name, m in prunable_modules(model):
        w = m.weight_orig if has_mask(m) else m.weight
        surv = int(m.weight_mask.sum().item()) if has_mask(m) else w.numel()
        rows.append(LayerStats(name, type(m).__name__, tuple(w.shape), w.numel(), surv))
    return rows


def format_layer_table(rows):
    """The per-layer table as aligned text, with a total line."""
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'type':<6} {'shape':<18} {'total':>10} {'alive':>10} {'pruned':>10} {'sparsity':>8}"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.kind:<6} {str(r.shape):<18} {r.total:>10,} {r.surviving:>10,} "
                     f"{r.pruned:>10,} {r.sparsity:>8.4f}")
    total = sum(r.total for r in rows)
    alive = sum(r.surviving for r in rows)
    lines.append(f"{'TOTAL':<{width}}  {'':<6} {'':<18} {total:>10,} {alive:>10,} {total - alive:>10,} "
                 f"{(total - alive) / max(total, 1):>8.4f}")
    return "\n".join(lines)


def masked_layer_names(state_dict):
    """Module names that carry a mask in a (reparametrised) state_dict."""
    return [k[: -len(".weight_mask")] for k in state_dict if k.endswith(".weight_mask")]


def unmasked_state_dict(state_dict):
    """A plain state_dict: p = p_orig * p_mask for every masked parameter, no *_orig / *_mask keys."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in state_dict:
            continue
        if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in state_dict:
            base = k[: -len("_orig")]
            out[base] = v * state_dict[base + "_mask"]
        else:
            out[k] = v
    return out


def export_plain_model(model):
    """Bake every mask into its plain parameter (in place) and return the model."""
    for m in model.modules():
        names = [h._tensor_name for h in m._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]
        for name in names:
            prune.remove(m, name)
    return model


def plain_copy(model):
    """A CPU copy of `model` with every mask baked into its parameter: the architecture without the pruning
    reparametrisation, for Torch-Pruning to trace and cut (a torch.compile'd twin is not copied)."""
    memo = {}
    for m in model.modules():
        for value in vars(m).values():
            if torch.is_tensor(value) and not value.is_leaf:  # a masked weight computed in a forward with grad:
                memo[id(value)] = value.detach()              # not copyable, and recomputed from *_orig below
    twin = model.__dict__.get("_bridge_compiled")
    if twin is not None:
        memo[id(twin)] = None
    copied = copy.deepcopy(model, memo)
    copied.__dict__.pop("_bridge_compiled", None)
    return export_plain_model(copied.cpu())
