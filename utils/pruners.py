"""Unstructured magnitude pruners: lamp, glob, unif, unifplus, erk (the published math).

Every pruner is `f(model, amount)`: it removes `amount` of the weights that are *still alive*
(k successive calls leave a density of (1 - amount)^k), choosing inside each layer the alive
weights of smallest magnitude. The pruners differ only in how many weights each layer loses:

* glob     - one global magnitude threshold: the round(amount * U) smallest alive weights overall.
* unif     - every layer loses round(amount * u_l) of its u_l alive weights.
* lamp     - LAMP scores s_i / sum_{j>=i} s_j of the sorted squared weights (Lee et al., ICLR 2021);
             the round(U (1 - amount)) highest scores survive (ties kept), every layer keeps >= 1.
* erk      - survivors per layer proportional to the sum of the weight's dimensions (Erdos-Renyi-
             Kernel), layers that would exceed their alive count are forced dense iteratively.
* unifplus - uniform, but the first conv stays dense and the last layer keeps >= 20% of its size.

Counts use Python's round() on the same products as torch.nn.utils.prune, so the numbers
match the published code. The model must carry masks (`utils.masks.add_masks`).
"""
import torch

from utils.errors import BridgeError, UnknownChoiceError
from utils.masks import masked_modules


def check_amount(amount):
    amount = float(amount)
    if not 0.0 <= amount < 1.0:
        raise BridgeError(f"pruning amount must be in [0, 1), got {amount}")
    return amount


def _alive_counts(modules):
    return [int(m.weight_mask.sum().item()) for _, m in modules]


def prune_smallest(module, n):
    """Mask the n alive weights of smallest |weight| in one module (ties in torch.topk order)."""
    n = int(n)
    if n <= 0:
        return 0
    with torch.no_grad():
        mask = module.weight_mask.reshape(-1).clone()
        score = module.weight_orig.detach().abs().reshape(-1).float().clone()
        alive = mask > 0
        n = min(n, int(alive.sum().item()))
        score[~alive] = float("inf")
        idx = torch.topk(score, n, largest=False, sorted=False).indices
        mask[idx] = 0
        module.weight_mask.copy_(mask.reshape(module.weight_mask.shape))
    return n


def prune_layers(modules, counts):
    for (_, m), n in zip(modules, counts):
        prune_smallest(m, n)


def _masked(model):
    mods = masked_modules(model)
    if not mods:
        raise BridgeError("the model has no masks: call utils.masks.add_masks(model) before pruning")
    return mods


def prune_weights_global(model, amount):
    """glob: prune the round(amount * U) alive weights of smallest magnitude across all layers."""
    amount = check_amount(amount)
    mods = _masked(model)
    alive = _alive_counts(mods)
    k = round(amount * sum(alive))
    if k == 0:
        return
    scores = []
    for _, m in mods:
        s = m.weight_orig.detach().abs().reshape(-1).float().clone()
        s[m.weight_mask.reshape(-1) == 0] = float("inf")
        scores.append(s)
    flat = torch.cat(scores)
    idx = torch.topk(flat, k, largest=False, sorted=False).indices
    offsets = torch.tensor([0] + [s.numel() for s in scores]).cumsum(0)
    counts = [int(((idx >= offsets[i]) & (idx < offsets[i + 1])).sum()) for i in range(len(mods))]
    # Remove exactly the globally chosen positions (equal magnitudes across layers make per-layer
    # counts alone ambiguous).
    with torch.no_grad():
        for i, (_, m) in enumerate(mods):
            local = idx[(idx >= offsets[i]) & (idx < offsets[i + 1])] - offsets[i]
            if counts[i]:
                mask = m.weight_mask.reshape(-1).clone()
                mask[local] = 0
                m.weight_mask.copy_(mask.reshape(m.weight_mask.shape))


def prune_weights_uniform(model, amount):
    """unif: every layer loses round(amount * alive_l) weights."""
    amount = check_amount(amount)
    mods = _masked(model)
    prune_layers(mods, [round(amount * u) for u in _alive_counts(mods)])


def lamp_scores(weight):
    """LAMP score of every entry of one layer: w_i^2 / sum of w_j^2 over entries j at least as large.

    Entries are sorted ascending by w^2; the i-th gets s_(i) / sum_{j >= i} s_(j). Returns a tensor
    shaped like `weight`.
    """
    s = weight.detach().float().reshape(-1) ** 2
    sorted_s, order = torch.sort(s)
    tail = sorted_s.flip(0).cumsum(0).flip(0)  # sum_{j >= i} s_(j)
    sorted_scores = sorted_s / tail.clamp_min(torch.finfo(torch.float32).tiny)
    scores = torch.empty_like(s)
    scores[order] = sorted_scores
    return scores.reshape(weight.shape)


def lamp_layer_counts(model, amount):
    """Per-layer number of weights LAMP removes (survivors = scores >= the global threshold)."""
    mods = _masked(model)
    alive = _alive_counts(mods)
    num_surv = round(sum(alive) * (1.0 - amount))
    if num_surv <= 0:
        raise BridgeError(f"pruning amount {amount} would leave no weight alive")
    scores = [lamp_scores(m.weight_orig * m.weight_mask).reshape(-1) for _, m in mods]
    threshold = torch.topk(torch.cat(scores), num_surv, sorted=True).values[-1]
    survivors = [int((s >= threshold).sum().item()) for s in scores]
    # round(amount_l * u_l) with amount_l = 1 - surv_l / u_l, as l1_unstructured would compute it
    return [round((1.0 - surv / u) * u) if u else 0 for surv, u in zip(survivors, alive)]


def prune_weights_lamp(model, amount):
    """lamp: layer-adaptive magnitude pruning with LAMP scores."""
    amount = check_amount(amount)
    prune_layers(_masked(model), lamp_layer_counts(model, amount))


def erk_survivor_counts(modules, alive, amount):
    """ERK survivors per layer, forcing layers dense (in order of largest overflow) until all fit."""
    scores = [float(sum(m.weight_orig.shape)) for _, m in modules]
    target = (1.0 - amount) * sum(alive)
    dense = set()
    while True:
        free = [i for i in range(len(modules)) if i not in dense]
        budget = target - sum(alive[i] for i in dense)
        denom = sum(scores[i] for i in free)
        cand = {i: round(budget * scores[i] / denom) if denom else 0 for i in free}
        over = {i: cand[i] / alive[i] for i in free if alive[i] and cand[i] / alive[i] > 1}
        if not over:
            break
        dense.add(max(over, key=over.get))
    return [alive[i] if i in dense else cand[i] for i in range(len(modules))], dense


def prune_weights_erk(model, amount):
    """erk: Erdos-Renyi-Kernel budgets (survivors proportional to the sum of a weight's dimensions)."""
    amount = check_amount(amount)
    mods = _masked(model)
    alive = _alive_counts(mods)
    survivors, _ = erk_survivor_counts(mods, alive, amount)
    prune_layers(mods, [max(u - s, 0) for u, s in zip(alive, survivors)])


def unifplus_layer_counts(modules, alive, amount):
    """Uniform+ removal counts: first conv dense, last layer keeps >= round(0.2 * its dense size).

    The published code keeps its counts in float32 tensors, so the totals, the fractions and the
    planned last-layer survivors are float32 (rounded half to even); each layer then removes
    round(float(fraction) * alive_l) in double, as torch.nn.utils.prune does. Doing the same
    arithmetic in float64 keeps one weight more or fewer in some vgg16 layers.
    """
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    alive32 = torch.tensor(alive, dtype=torch.float32)
    keep_last = torch.round(f32(modules[-1][1].weight_orig.numel()) * 0.2)
    to_prune = torch.round(alive32.sum() * amount)
    first_is_conv = modules[0][1].weight_orig.dim() == 4
    start = 1 if first_is_conv and len(modules) > 1 else 0
    if sum(alive[start:]) == 0:
        return [0] * len(modules)
    frac = to_prune / alive32[start:].sum()
    if frac > 1:
        raise BridgeError(f"unifplus cannot prune {amount:.4f} of the alive weights with the first layer kept dense")
    counts = [0] * len(modules)
    last = len(modules) - 1
    if torch.round((1 - frac) * alive32[last]) < keep_last and last > start:
        # The published code would ask for a negative amount once the last layer is already below
        # its 20% floor; it then simply keeps the whole last layer.
        last_to_prune = (alive32[last] - keep_last).clamp_min(0)
        counts[last] = round(float(last_to_prune / alive32[last]) * alive[last]) if alive[last] else 0
        middle = alive32[start:last].sum()
        frac_mid = (to_prune - last_to_prune) / middle if middle > 0 else f32(0.0)
        if frac_mid > 1:
            raise BridgeError(f"unifplus cannot prune {amount:.4f} of the alive weights within its layer rules")
        for i in range(start, last):
            counts[i] = round(float(frac_mid) * alive[i])
    else:
        for i in range(start, len(modules)):
            counts[i] = round(float(frac) * alive[i])
    return counts


def prune_weights_unifplus(model, amount):
    """unifplus: Uniform+ (Gale et al.): first conv dense, last layer keeps at least 20%."""
    amount = check_amount(amount)
    mods = _masked(model)
    prune_layers(mods, unifplus_layer_counts(mods, _alive_counts(mods), amount))


PRUNERS = {
    "lamp": prune_weights_lamp,
    "glob": prune_weights_global,
    "unif": prune_weights_uniform,
    "unifplus": prune_weights_unifplus,
    "erk": prune_weights_erk,
}


def weight_pruner_loader(name):
    """The pruning function registered under `name`."""
    if name not in PRUNERS:
        raise UnknownChoiceError("pruner", name, PRUNERS)
    return PRUNERS[name]
