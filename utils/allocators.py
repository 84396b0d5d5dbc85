"""Budget allocators other than the RL controller, so users can measure what the controller adds.

All take the search layers in search order (ascending SSIM), their SSIM scores and capacities and a
budget K, and return {layer: count} with every count <= capacity and the total exactly
min(K, Σ capacity):

* greedy        fill the lowest-SSIM layer first, then the next (the published `fill` mode)
* proportional  shares ∝ 1 - SSIM (the published `prop` mode, without its over-allocation from
                independent rounding: largest-remainder rounding, capped shares redistributed)
* uniform       equal shares
* random        a random split: shares drawn from a flat Dirichlet (used as random search when run
                for several episodes)
* rl            the LSTM controller (utils.controller), not handled here
"""
import torch

from utils.errors import UnknownChoiceError

ALLOCATORS = ("rl", "greedy", "proportional", "uniform", "random")


def split_budget(budget, weights, capacities):
    """Integer split of `budget` ∝ weights, capped by capacities, summing to min(budget, Σcap).

    Water-filling: layers whose proportional share exceeds their capacity get the capacity, the rest
    is re-split among the others; integer parts are completed by the largest remainders.
    """
    n = len(weights)
    caps = [int(c) for c in capacities]
    budget = min(int(budget), sum(caps))
    out = [0] * n
    active = [i for i in range(n) if caps[i] > 0]
    left = budget
    while left > 0 and active:
        w = [max(float(weights[i]), 0.0) for i in active]
        if sum(w) <= 0:
            w = [1.0] * len(active)
        total_w = sum(w)
        shares = {i: left * wi / total_w for i, wi in zip(active, w)}
        capped = [i for i in active if shares[i] >= caps[i] - out[i]]
        if capped:
            for i in capped:
                left -= caps[i] - out[i]
                out[i] = caps[i]
            active = [i for i in active if i not in capped]
            continue
        floors = {i: int(shares[i]) for i in active}
        for i in active:
            out[i] += floors[i]
        rest = left - sum(floors.values())
        order = sorted(active, key=lambda i: (-(shares[i] - floors[i]), i))
        for i in order[:rest]:
            out[i] += 1
        left = 0
    return out


def quantise(counts, units, caps, budget):
    """Round counts down to multiples of each layer's unit, then hand leftovers out in layer order."""
    out = [c - c % u for c, u in zip(counts, units)]
    left = min(budget, sum(caps)) - sum(out)
    for i, u in enumerate(units):
        while left >= u and out[i] + u <= caps[i]:
            out[i] += u
            left -= u
    return out


def allocate(name, layers, ssim, capacities, budget, generator=None, units=None):
    """{layer: count} for a non-RL allocator (see module docstring); `units` as in sample_allocation."""
    caps = [capacities[n] for n in layers]
    if name == "greedy":
        counts, left = [], min(budget, sum(caps))
        for c in caps:
            counts.append(min(c, left))
            left -= counts[-1]
    elif name == "proportional":
        counts = split_budget(budget, [1.0 - ssim.get(n, 0.5) for n in layers], caps)
    elif name == "uniform":
        counts = split_budget(budget, [1.0] * len(layers), caps)
    elif name == "random":
        u = torch.rand(len(layers), generator=generator).clamp_min(1e-12)
        counts = split_budget(budget, (-u.log()).tolist(), caps)  # Exp(1) draws normalised = Dirichlet(1)
    else:
        raise UnknownChoiceError("allocator", name, ALLOCATORS)
    if units:
        counts = quantise(counts, [int(units.get(n, 1)) for n in layers], caps, budget)
    return {n: c for n, c in zip(layers, counts) if c > 0}
