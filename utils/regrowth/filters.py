"""Structured regrowth: the regrowth search over filters instead of single weights.

The unit is a channel of a channel group (`utils.structured`): restoring it turns its filters back on
in every coupled conv. Per group:

* SSIM: the lowest SSIM among its convs (the most drifted member decides its priority);
* capacity: pruned channels x filters per channel, in filters; allocations are whole channels;
* saliency per channel, on the dense model: `fisher` Σ g²·w² (default) or `taylor` Σ|g·w| over each
  filter, summed over the group's convs;
* initial values (`--init_strategy`): `reference` (default) copies the dense filters, conv biases,
  BatchNorm weight, bias and running statistics, and the dense input columns of the layers that read
  the channel; `zero` gives zero filters with an identity BatchNorm (what the published one-shot
  code ended up doing: in a ReLU network such a channel never trains again); `kaiming` draws
  He-uniform filters with an identity BatchNorm.
"""
import torch

from utils.errors import UnknownChoiceError
from utils.regrowth.weights import fan_in_out
from utils.saliency import weight_saliency
from utils.structured import alive_channels, channel_sparsity, set_channels

STRUCTURED_INITS = ("reference", "zero", "kaiming")
SCORES = ("fisher", "taylor")


def check_structured_init(name):
    name = {"magnitude": "reference"}.get(name, name)
    if name not in STRUCTURED_INITS:
        raise UnknownChoiceError("structured init strategy", name, STRUCTURED_INITS)
    return name


def group_ssim(conv_ssim, groups):
    """{group root: min SSIM over its convs that have a map} (groups without any map are left out)."""
    out = {}
    for g in groups:
        scores = [conv_ssim[n] for n, _ in g.convs if n in conv_ssim]
        if scores:
            out[g.root] = min(scores)
    return out


def group_capacities(model, groups):
    """{root: pruned filters} (pruned channels x filters per channel)."""
    return {g.root: int((~alive_channels(model, g)).sum()) * g.cost for g in groups}


def group_saliency(dense, loader, groups, device, mode="fisher", max_batches=None, precision=None):
    """{root: per-channel score} from one pass on the dense model (see module docstring)."""
    if mode not in SCORES:
        raise UnknownChoiceError("regrowth score", mode, SCORES)
    convs = list(dict.fromkeys(n for g in groups for n, _ in g.convs))
    kwargs = {} if precision is None else {"precision": precision}
    fisher, taylor = weight_saliency(dense, loader, convs, device, max_batches, with_taylor=True, **kwargs)
    per_weight = fisher if mode == "fisher" else taylor
    per_filter = {n: s.reshape(s.shape[0], -1).sum(1) for n, s in per_weight.items()}
    return {g.root: sum(per_filter[n][torch.as_tensor(idx)] for n, idx in g.convs) for g in groups}


@torch.no_grad()
def restore_channels(model, group, channels, dense_state, init="reference", generator=None):
    """Turn channels of a group back on in place and give them their initial values."""
    if not channels:
        return
    set_channels(model, group, channels, alive=True)
    mods = dict(model.named_modules())

    def param(module, name):
        return getattr(module, name + "_orig") if hasattr(module, name + "_orig") else getattr(module, name)

    for name, idxs in group.convs:
        m = mods[name]
        rows = torch.as_tensor([idxs[c] for c in channels], dtype=torch.long)
        w = param(m, "weight")
        if init == "reference":
            w[rows.to(w.device)] = dense_state[f"{name}.weight"][rows].to(w.device, w.dtype)
        elif init == "zero":
            w[rows.to(w.device)] = 0
        else:
            bound = (6.0 / fan_in_out(w)[0]) ** 0.5
            vals = (torch.rand((len(rows),) + tuple(w.shape[1:]), generator=generator) * 2 - 1) * bound
            w[rows.to(w.device)] = vals.to(w.device, w.dtype)
        if m.bias is not None or hasattr(m, "bias_orig"):
            b = param(m, "bias")
            ref = dense_state.get(f"{name}.bias")
            b[rows.to(b.device)] = ref[rows].to(b.device, b.dtype) if init == "reference" and ref is not None else 0
    for name, idxs in group.norms:
        m = mods[name]
        rows = torch.as_tensor([idxs[c] for c in channels], dtype=torch.long)
        dev = m.running_mean.device
        if init == "reference":
            for p in ("weight", "bias"):
                param(m, p)[rows.to(dev)] = dense_state[f"{name}.{p}"][rows].to(dev)
            m.running_mean[rows.to(dev)] = dense_state[f"{name}.running_mean"][rows].to(dev)
            m.running_var[rows.to(dev)] = dense_state[f"{name}.running_var"][rows].to(dev)
        else:  # identity BatchNorm, as the published zero-init code left it
            param(m, "weight")[rows.to(dev)] = 1.0
            param(m, "bias")[rows.to(dev)] = 0.0
            m.running_mean[rows.to(dev)] = 0.0
            m.running_var[rows.to(dev)] = 1.0
    if init == "reference":  # the layers reading the channel get their dense input columns back
        for name, idxs in group.consumers:
            m = mods[name]
            cols = torch.as_tensor([idxs[c] for c in channels], dtype=torch.long)
            w = param(m, "weight")
            w[:, cols.to(w.device)] = dense_state[f"{name}.weight"][:, cols].to(w.device, w.dtype)


class FilterRegrower:
    """Structured regrowth of an allocation {group root: filters}: the highest-scored pruned channels."""

    def __init__(self, groups, scores, dense_state, init="reference"):
        self.groups = {g.root: g for g in groups}
        self.scores, self.dense_state, self.init = scores, dense_state, check_structured_init(init)

    def apply(self, model, allocation, generator=None):
        """Regrow in place; returns ({root: channel indices}, filters regrown)."""
        out, filters = {}, 0
        for root, count in allocation.items():
            g = self.groups[root]
            n = int(count) // g.cost
            dead = ~alive_channels(model, g)
            if n <= 0 or not dead.any():
                continue
            score = self.scores[root].clone().float().masked_fill(~dead, float("-inf"))
            chans = torch.topk(score, min(n, int(dead.sum()))).indices
            restore_channels(model, g, chans.tolist(), self.dense_state, self.init, generator)
            out[root] = chans
            filters += len(chans) * g.cost
        return out, filters

    def restored_saliency(self, regrown):
        """(score of the regrown channels, score of every channel of the search groups)."""
        restored = sum(float(self.scores[r][torch.as_tensor(c).cpu()].double().sum()) for r, c in regrown.items())
        return restored, sum(float(s.double().sum()) for s in self.scores.values())

    def sparsity(self, model):
        return channel_sparsity(model)
