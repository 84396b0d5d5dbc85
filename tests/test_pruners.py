"""Pruners against independent computations: exact counts, LAMP by brute force, ERK and Unif+ rules."""
import numpy as np
import pytest
import torch

from models import model_loader
from utils.errors import BridgeError, UnknownChoiceError
from utils.masks import add_masks, count_pruned_params, masked_modules, model_sparsity
from utils.pruners import PRUNERS, lamp_scores, weight_pruner_loader


def _alive(model):
    return [int(m.weight_mask.sum()) for _, m in masked_modules(model)]


def _masks(model):
    return [m.weight_mask.clone() for _, m in masked_modules(model)]


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_iterative_composition_gives_published_grid(name):
    torch.manual_seed(0)
    model = add_masks(model_loader("resnet20"))
    got = []
    for _ in range(3):
        PRUNERS[name](model, 0.3)
        got.append(round(model_sparsity(model), 3))
    assert got == [0.3, 0.51, 0.657]


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_only_alive_weights_are_pruned_and_smallest_first(name, tiny_net):
    model = add_masks(tiny_net)
    PRUNERS[name](model, 0.5)
    before = _masks(model)
    PRUNERS[name](model, 0.4)
    for (_, m), old in zip(masked_modules(model), before):
        assert torch.all(m.weight_mask <= old)  # a mask never grows back
        w = m.weight_orig.detach().abs()
        newly = (old == 1) & (m.weight_mask == 0)
        alive = m.weight_mask == 1
        if newly.any() and alive.any():  # within a layer, magnitude order decides
            assert w[newly].max() <= w[alive].min()


def test_global_counts_and_threshold(tiny_net):
    model = add_masks(tiny_net)
    PRUNERS["glob"](model, 0.37)
    total, surviving, pruned = count_pruned_params(model)
    assert pruned == round(0.37 * total)
    w_pruned = torch.cat([m.weight_orig.detach().abs()[m.weight_mask == 0] for _, m in masked_modules(model)])
    w_alive = torch.cat([m.weight_orig.detach().abs()[m.weight_mask == 1] for _, m in masked_modules(model)])
    assert w_pruned.max() <= w_alive.min()
    # second call: amount of the *remaining* weights
    PRUNERS["glob"](model, 0.5)
    assert count_pruned_params(model)[1] == surviving - round(0.5 * surviving)


def test_uniform_counts_per_layer(tiny_net):
    model = add_masks(tiny_net)
    PRUNERS["unif"](model, 0.25)
    alive = _alive(model)
    PRUNERS["unif"](model, 0.3)
    assert _alive(model) == [a - round(0.3 * a) for a in alive]


def _brute_force_lamp(model, amount):
    """LAMP from its definition, with Python loops: survivors per layer."""
    layers = []
    for _, m in masked_modules(model):
        w = (m.weight_orig * m.weight_mask).detach().reshape(-1).tolist()
        sq = [v * v for v in w]
        scores = []
        for s in sq:
            denom = sum(t for t in sq if t >= s)
            scores.append(s / denom if denom > 0 else 0.0)
        layers.append(scores)
    alive = sum(_alive(model))
    keep = round(alive * (1 - amount))
    flat = sorted((s for layer in layers for s in layer), reverse=True)
    threshold = flat[keep - 1]
    return [sum(1 for s in layer if s >= threshold) for layer in layers]


@pytest.mark.parametrize("amount", [0.3, 0.8, 0.95])
def test_lamp_matches_brute_force(tiny_net, amount):
    model = add_masks(tiny_net)
    PRUNERS["lamp"](model, 0.2)  # start from a partly pruned model: scores must ignore pruned entries
    expected = _brute_force_lamp(model, amount)
    PRUNERS["lamp"](model, amount)
    assert _alive(model) == expected
    assert all(a >= 1 for a in _alive(model))  # every layer keeps its largest weight


def test_lamp_scores_definition():
    w = torch.tensor([3.0, -1.0, 2.0, 0.5])
    sq = w**2  # 9, 1, 4, 0.25 ; ascending 0.25, 1, 4, 9 ; tails 14.25, 14, 13, 9
    expected = torch.tensor([9 / 9, 1 / 14, 4 / 13, 0.25 / 14.25])
    assert torch.allclose(lamp_scores(w), expected)
    assert lamp_scores(w).max() == 1.0 and sq.argmax() == lamp_scores(w).argmax()


def test_erk_forces_small_layers_dense_and_follows_sum_of_dims():
    torch.manual_seed(0)
    model = add_masks(model_loader("resnet20"))
    mods = masked_modules(model)
    PRUNERS["erk"](model, 0.9)
    alive = _alive(model)
    sizes = [m.weight_orig.numel() for _, m in mods]
    dims = [sum(m.weight_orig.shape) for _, m in mods]
    dense = [i for i, (a, n) in enumerate(zip(alive, sizes)) if a == n]
    assert dense, "at 90% sparsity ERK must force some small layer (e.g. conv1 or linear) dense"
    free = [i for i in range(len(mods)) if i not in dense]
    # survivors of the non-dense layers are proportional to the sum of dimensions (up to rounding)
    budget = round(0.1 * sum(sizes)) - sum(sizes[i] for i in dense)
    for i in free:
        expected = budget * dims[i] / sum(dims[j] for j in free)
        assert abs(alive[i] - expected) <= 1.0
        assert alive[i] <= sizes[i]
    # every forced-dense layer would overflow its proportional share (the share only grows as
    # layers are forced dense, so checking against the final share is enough)
    for i in dense:
        assert sizes[i] < budget * dims[i] / sum(dims[j] for j in free) + 0.5


def test_unifplus_first_layer_dense_and_last_layer_floor():
    torch.manual_seed(0)
    model = add_masks(model_loader("resnet20"))
    mods = masked_modules(model)
    n_first, n_last = mods[0][1].weight_orig.numel(), mods[-1][1].weight_orig.numel()
    total = sum(m.weight_orig.numel() for _, m in mods)
    PRUNERS["unifplus"](model, 0.5)
    alive = _alive(model)
    frac = round(0.5 * total) / (total - n_first)  # the first conv's share goes to the others
    assert alive[0] == n_first
    assert alive[-1] == n_last - round(frac * n_last)  # floor not binding at 50%
    assert abs(sum(alive) - (total - round(0.5 * total))) <= len(mods)

    before = alive
    PRUNERS["unifplus"](model, 0.9)
    alive = _alive(model)
    assert alive[0] == n_first
    assert alive[-1] == round(0.2 * n_last)  # floor binding: exactly 20% of the dense size kept
    to_prune = round(0.9 * sum(before))
    # the middle layers absorb what the first and last layers do not take, uniformly
    frac_mid = (to_prune - (before[-1] - round(0.2 * n_last))) / sum(before[1:-1])
    for a, b in zip(alive[1:-1], before[1:-1]):
        assert a == b - round(frac_mid * b)


def test_channels_last_gives_identical_masks():
    torch.manual_seed(0)
    a = add_masks(model_loader("resnet20"))
    b = add_masks(model_loader("resnet20"))
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    for name in ("glob", "lamp"):
        PRUNERS[name](a, 0.8)
        PRUNERS[name](b, 0.8)
        assert all(torch.equal(x, y) for x, y in zip(_masks(a), _masks(b)))


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5])
def test_bad_amount_is_a_user_error(tiny_net, amount):
    with pytest.raises(BridgeError, match=r"\[0, 1\)"):
        PRUNERS["glob"](add_masks(tiny_net), amount)


def test_unknown_pruner_lists_choices():
    with pytest.raises(UnknownChoiceError, match="lamp"):
        weight_pruner_loader("magic")


def _unifplus_kept_float32(sizes, amount):
    """Independent Uniform+ kept counts with the published float32 arithmetic (numpy), dense start."""
    f32 = np.float32
    n = np.array(sizes, dtype=f32)
    to_prune = np.round(n.sum(dtype=f32) * f32(amount))
    frac = to_prune / n[1:].sum(dtype=f32)
    keep_last = np.round(n[-1] * f32(0.2))
    removed = [0] + [round(float(frac) * s) for s in sizes[1:]]
    if np.round((f32(1) - frac) * n[-1]) < keep_last:
        last = n[-1] - keep_last
        frac_mid = (to_prune - last) / n[1:-1].sum(dtype=f32)
        removed = [0] + [round(float(frac_mid) * s) for s in sizes[1:-1]] + [round(float(last / n[-1]) * sizes[-1])]
    return [s - r for s, r in zip(sizes, removed)]


@pytest.mark.parametrize("amount,published", [
    (0.9, {"features.17": 58_900, "features.20": 58_900}),
    (0.98, {"features.27": 46_766, "features.30": 46_766, "features.34": 46_766, "features.37": 46_766,
            "features.40": 46_766}),
])
def test_unifplus_vgg16_counts_use_the_published_float32_arithmetic(amount, published):
    model = add_masks(model_loader("vgg16"))
    mods = masked_modules(model)
    PRUNERS["unifplus"](model, amount)
    kept = dict(zip([n for n, _ in mods], _alive(model)))
    expected = _unifplus_kept_float32([m.weight_orig.numel() for _, m in mods], amount)
    assert list(kept.values()) == expected
    for name, count in published.items():  # counts the published code keeps (float64 gives one more or fewer)
        assert kept[name] == count
