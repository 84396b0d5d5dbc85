"""Which filters a structured pruning step removes: Torch-Pruning's group importances, as published.

The published structured pruning removes filters physically and at every step builds a new
`tp.pruner.MagnitudePruner` (local ranking, `iterative_steps=1`, every Linear ignored) on the
already smaller model, with one of the library's importances:

* l1 / l2  `MagnitudeImportance(p)`: per channel, the p-th power sum of every weight the channel owns
           in its dependency group (the conv filters, the BatchNorm weight, the consumers' input
           columns), averaged over the group's members and divided by the group's mean;
* lamp     `LAMPImportance()`: the p=2 group score, LAMP-normalised within the group;
* taylor   `TaylorImportance()`: sum |w * dL/dw| over the same members, from gradients of training
           batches (the library's BatchNorm term is only taken for GroupNorm, so BatchNorm adds nothing);
* hessian  `HessianImportance()`: OBD, sum w^2 * (dL/dw)^2 of per-sample gradients. Torch-Pruning 1.6
           keys its accumulator by parameter but looks it up by name, so only the last sample's
           squared gradient is kept; the published pipeline inherits this, and so do we.

Here a pruned filter stays as a mask. To score exactly what the published code scores, each step
exports the compact model (masked channels removed physically: `utils.compact`), runs the library's
pruner on it interactively, and maps the channels it would remove back to the masked model. A masked
channel does not exist in the compact model, so it stays pruned, and neither its zeroed weights nor
its consumers' input columns (which stay in the masked model) enter any score.

Where a step would empty a layer (a ratio above 1 - 1/width), the library leaves that whole group
untouched (`DependencyGraph.check_pruning_group`), and so do we; a group at one channel is skipped.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from utils.compact import export_compact
from utils.errors import BridgeError, UnknownChoiceError
from utils.structured import SCOPES, alive_channels, channel_groups, set_channels

IMPORTANCE = ("l1", "l2", "lamp", "taylor", "hessian")
GRADIENT_IMPORTANCE = ("taylor", "hessian")
# Training batches the published code spends on the gradient importances.
PUBLISHED_GRADIENT_BATCHES = {"taylor": 1, "hessian": 4}


def check_importance(criterion):
    if criterion not in IMPORTANCE:
        raise UnknownChoiceError("importance", criterion, IMPORTANCE)
    return criterion


def make_importance(criterion):
    """A fresh Torch-Pruning importance object with the library's defaults (the published settings)."""
    check_importance(criterion)
    if criterion in ("l1", "l2"):
        return tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2)
    if criterion == "lamp":
        return tp.importance.LAMPImportance()
    if criterion == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.HessianImportance()


def fill_gradients(model, criterion, importance, batches):
    """Leave in `.grad` (taylor) or in the importance (hessian) what the published scoring reads.

    taylor: the summed cross-entropy gradient of the batches; hessian: per-sample gradients handed
    to `importance.accumulate_grad` one sample at a time. Train mode, as published (BatchNorm uses
    batch statistics; the model is a throw-away compact copy, so its running statistics do not matter).
    The published taylor step also adds the previous finetune's last gradient (no zero_grad); we do not.
    """
    if not batches:
        raise BridgeError(f"the {criterion} importance needs at least one training batch")
    model.train()
    model.zero_grad(set_to_none=True)
    if criterion == "hessian":
        importance.zero_grad()
    for x, y in batches:
        if criterion == "taylor":
            F.cross_entropy(model(x), y).backward()
            continue
        losses = F.cross_entropy(model(x), y, reduction="none")
        for k, loss in enumerate(losses):
            model.zero_grad()
            loss.backward(retain_graph=k < len(losses) - 1)
            importance.accumulate_grad(model)
    model.eval()


def _dense_rows(masked_model, groups):
    """{conv name: alive output rows of the masked model, ascending} = compact row i -> masked row."""
    modules = dict(masked_model.named_modules())
    rows = {}
    for g in groups:
        for name, _ in g.convs:
            mask = modules[name].weight_mask
            rows[name] = torch.nonzero(mask.reshape(mask.shape[0], -1).amax(1) > 0).flatten().tolist()
    return rows


def _row_to_channel(groups):
    """{conv name: (group, {conv row: group channel})} over every conv whose filters a group owns."""
    out = {}
    for g in groups:
        for name, idxs in g.convs:
            out[name] = (g, {row: c for c, row in enumerate(idxs)})
    return out


def select_channels(masked_model, input_size, amount, criterion="l1", scope="local", batches=None):
    """{group root: [channels the published pruner removes at this step]} for a masked model.

    `amount` is the pruner's `pruning_ratio` for this step (local: of each group's alive channels;
    global: of all alive channels, one ranking over the groups' normalised scores); `batches` are
    (inputs, labels) training batches, needed by the gradient importances.
    """
    check_importance(criterion)
    if scope not in SCOPES:
        raise UnknownChoiceError("pruning scope", scope, SCOPES)
    if not 0.0 <= amount < 1.0:
        raise BridgeError(f"pruning amount must be in [0, 1), got {amount}")
    if amount == 0.0:
        return {}
    groups = channel_groups(masked_model, input_size)
    device = next(masked_model.parameters()).device
    compact = export_compact(masked_model, input_size).to(device)
    importance = make_importance(criterion)
    if criterion in GRADIENT_IMPORTANCE:
        fill_gradients(compact, criterion, importance, [(x.to(device), y.to(device)) for x, y in batches or []])
    pruner = tp.pruner.MagnitudePruner(
        compact, torch.randn(1, 3, input_size, input_size, device=device), importance=importance, iterative_steps=1,
        pruning_ratio=amount, global_pruning=scope == "global",
        ignored_layers=[m for m in compact.modules() if isinstance(m, nn.Linear)])
    names = {m: n for n, m in compact.named_modules()}
    rows, to_channel = _dense_rows(masked_model, groups), _row_to_channel(groups)
    chosen = {}
    for group in pruner.step(interactive=True):  # the groups are only read: the compact copy is thrown away
        module = group[0].dep.target.module
        local = sorted(int(i) for i in group[0].idxs)
        name = names[module]
        g, channel_of = to_channel[name]
        chosen[g.root] = sorted(channel_of[rows[name][i]] for i in local)
    return chosen


def prune_channels(masked_model, input_size, amount, criterion="l1", scope="local", batches=None):
    """One structured pruning step on a masked model (see `select_channels`); returns the filters removed."""
    removed = 0
    groups = {g.root: g for g in channel_groups(masked_model, input_size)}
    for root, channels in select_channels(masked_model, input_size, amount, criterion, scope, batches).items():
        g = groups[root]
        if not bool(alive_channels(masked_model, g)[channels].all()):
            raise BridgeError(f"internal error: {root} would prune an already pruned channel")
        set_channels(masked_model, g, channels, alive=False)
        removed += len(channels) * g.cost
    return removed
