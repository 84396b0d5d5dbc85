"""Structured (filter) masks: channel groups, filter masks, importance, pruning and channel sparsity.

A pruned filter stays in the model as a mask, so that regrowth can bring it back: the conv's
`weight_mask` row (and its bias mask) and the following BatchNorm's weight and bias masks are set to 0,
so the channel's output is exactly zero after BatchNorm.

Channels are pruned per *channel group*: the set of layers whose output channels are tied together
by the network's structure, found with Torch-Pruning's dependency graph. In a ResNet the stem (or a
stage's projection shortcut) and every block's `conv2` in that stage add into one residual stream,
so channel c of all of them is pruned or regrown together, and likewise EfficientNet's expand conv,
depthwise conv and squeeze-excitation gate. This is the published torch-pruning coupling; it is what
makes a masked channel physically removable (`utils.compact`). A group's cost is the number of
convs in it: restoring one channel of a ResNet stage restores one filter in each of its convs.

Structured sparsity = pruned filters / all Conv2d filters (the published metric), counted from the
masks: a filter is pruned when its whole weight-mask row is zero. Which filters a pruning step
removes (the published Torch-Pruning importances) is `utils.structured_importance`.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from utils.errors import BridgeError
from utils.masks import add_masks, has_mask, plain_copy

SCOPES = ("local", "global")


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channel c is one unit. Index lists are aligned with the root's channels."""

    root: str
    size: int
    convs: tuple        # ((conv name, [index per root channel]), ...) whose filters (output rows) belong here
    norms: tuple        # ((batchnorm name, [index ...]), ...)
    consumers: tuple    # ((conv/linear name, [input index ...]), ...) reading these channels

    @property
    def cost(self):
        """Filters restored (or removed) per channel of this group."""
        return len(self.convs)


def _trace_groups(model, input_size):
    import torch_pruning as tp

    model = model.eval()
    names = {m: n for n, m in model.named_modules()}
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear)]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, input_size, input_size))
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        convs, norms, consumers = [], [], []
        for dep, idxs in group:
            module, name = dep.target.module, names.get(dep.target.module)
            if name is None:
                continue
            out = dep.handler.__name__ == "prune_out_channels"
            idxs = [int(i) for i in idxs]
            if isinstance(module, nn.Conv2d):
                depthwise = module.groups > 1 and module.groups == module.in_channels
                if out:
                    convs.append((name, idxs))
                elif not depthwise:
                    consumers.append((name, idxs))
            elif isinstance(module, nn.BatchNorm2d) and out:
                norms.append((name, idxs))
            elif isinstance(module, nn.Linear) and not out:
                consumers.append((name, idxs))
        if not convs:
            continue
        root = convs[0][0]
        groups.append(ChannelGroup(root, len(convs[0][1]), tuple((n, tuple(i)) for n, i in convs),
                                   tuple((n, tuple(i)) for n, i in norms), tuple((n, tuple(i)) for n, i in consumers)))
    order = {n: k for k, (n, _) in enumerate(model.named_modules())}
    return sorted(groups, key=lambda g: order[g.root])


def architecture_key(model):
    """What the channel groups depend on: the module class and every parameter's name and shape."""
    shapes = tuple(sorted((k.removesuffix("_orig"), tuple(v.shape)) for k, v in model.state_dict().items()
                          if not k.endswith("_mask")))  # sorted: masking reorders a module's entries
    return type(model).__module__, type(model).__qualname__, shapes


_GROUPS = {}


def channel_groups(model, input_size):
    """The channel groups of `model`'s architecture for square inputs of `input_size` pixels (traced once per
    architecture and process, on a plain copy)."""
    key = (architecture_key(model), int(input_size))
    if key not in _GROUPS:
        try:
            groups = tuple(_trace_groups(plain_copy(model), input_size))
        except Exception as exc:  # Torch-Pruning's tracer fails inside its own code on some graphs
            raise BridgeError(f"Torch-Pruning cannot trace the channel coupling of {type(model).__name__} "
                              f"({type(exc).__name__}: {exc}); prune its weights instead (prune_unstructure.py)") from exc
        if not groups:
            raise BridgeError(f"{type(model).__name__} has no prunable channel groups (every conv's output channels "
                              "also feed a linear layer's outputs, which stay whole); prune its weights instead (prune_unstructure.py)")
        _GROUPS[key] = groups
    return _GROUPS[key]


def _modules(model):
    return dict(model.named_modules())


def add_structured_masks(model):
    """Masks on every Conv/Linear weight (as unstructured), every conv bias and every BatchNorm weight and bias."""
    add_masks(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None and not hasattr(m, "bias_mask"):
            prune.identity(m, "bias")
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            for p in ("weight", "bias"):
                if not hasattr(m, p + "_mask"):
                    prune.identity(m, p)
    return model


def is_structured_model(model):
    return any(isinstance(m, nn.BatchNorm2d) and hasattr(m, "weight_mask") for m in model.modules())


def _set_rows(tensor, rows, value):
    """tensor[rows] = value on dim 0, in any memory layout."""
    if len(rows):
        tensor.index_fill_(0, torch.as_tensor(rows, dtype=torch.long, device=tensor.device), value)


@torch.no_grad()
def set_channels(model, group, channels, alive):
    """Mask (alive=False) or unmask (alive=True) channels (root positions) of a group in every member."""
    mods = _modules(model)
    value = 1.0 if alive else 0.0
    channels = list(channels)
    for name, idxs in group.convs:
        m = mods[name]
        rows = [idxs[c] for c in channels]
        _set_rows(m.weight_mask, rows, value)
        if hasattr(m, "bias_mask"):
            _set_rows(m.bias_mask, rows, value)
    for name, idxs in group.norms:
        m = mods[name]
        rows = [idxs[c] for c in channels]
        for p in ("weight_mask", "bias_mask"):
            if hasattr(m, p):
                _set_rows(getattr(m, p), rows, value)


def alive_channels(model, group):
    """Bool tensor over the group's channels: True where the root filter's mask row is not all zero."""
    m = _modules(model)[group.root]
    rows = m.weight_mask.reshape(m.weight_mask.shape[0], -1).detach().amax(1) > 0
    return rows[torch.as_tensor(group.convs[0][1], device=rows.device)].cpu()


def filter_counts(model):
    """(pruned filters, total filters) over every Conv2d, from the weight masks."""
    pruned = total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += m.out_channels
            if has_mask(m):
                rows = m.weight_mask.reshape(m.out_channels, -1).detach().amax(1)
                pruned += int((rows == 0).sum().item())
    return pruned, total


def channel_sparsity(model):
    pruned, total = filter_counts(model)
    return pruned / total if total else 0.0
