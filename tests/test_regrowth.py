"""Regrowth: exactly k pruned positions, highest saliency first, within capacity, right initial values."""
import math

import pytest
import torch

from models import model_loader
from utils.errors import UnknownChoiceError
from utils.masks import add_masks, count_pruned_params, effective_weight, masked_modules
from utils.pruners import PRUNERS
from utils.regrowth.weights import (apply_allocation, canonical_init, dense_reference_weights, fan_in_out, layer_capacities,
                            regrow_layer)


def _sparse_pair(amount=0.9, channels_last=False):
    """A dense resnet20 and a globally pruned copy of it."""
    torch.manual_seed(0)
    dense = model_loader("resnet20")
    sparse = model_loader("resnet20")
    sparse.load_state_dict(dense.state_dict())
    PRUNERS["glob"](add_masks(sparse), amount)
    if channels_last:
        sparse = sparse.to(memory_format=torch.channels_last)
    return dense, sparse


@pytest.mark.parametrize("channels_last", [False, True])
def test_regrows_exactly_k_highest_saliency_pruned_positions(channels_last):
    _, sparse = _sparse_pair(channels_last=channels_last)
    module = dict(sparse.named_modules())["layer2.1.conv1"]
    before = module.weight_mask.clone()
    saliency = torch.rand(module.weight_mask.shape, generator=torch.Generator().manual_seed(1))
    idx = regrow_layer(module, saliency, 500, "zero")
    after = module.weight_mask
    assert idx.numel() == 500
    flipped = (before == 0) & (after == 1)
    assert int(flipped.sum()) == 500 and torch.all(after >= before)  # only pruned positions change, 0 -> 1
    # brute force: the 500 largest saliencies among positions that were pruned
    cand = [(float(s), i) for i, (s, m) in enumerate(zip(saliency.reshape(-1), before.reshape(-1))) if m == 0]
    expected = {i for _, i in sorted(cand, reverse=True)[:500]}
    assert set(idx.tolist()) == expected
    assert set(torch.nonzero(flipped.reshape(-1)).flatten().tolist()) == expected
    assert torch.all(effective_weight(module).reshape(-1)[idx] == 0)  # zero init


def test_capacity_is_respected():
    _, sparse = _sparse_pair()
    module = dict(sparse.named_modules())["conv1"]
    cap = int((module.weight_mask == 0).sum())
    idx = regrow_layer(module, torch.ones_like(module.weight_mask), cap + 1000, "zero")
    assert idx.numel() == cap and torch.all(module.weight_mask == 1)
    assert regrow_layer(module, torch.ones_like(module.weight_mask), 5, "zero").numel() == 0


def test_reference_init_restores_dense_values():
    dense, sparse = _sparse_pair()
    name = "layer3.0.conv2"
    ref = dense_reference_weights(dense, [name])
    module = dict(sparse.named_modules())[name]
    idx = regrow_layer(module, torch.rand(module.weight_mask.shape), 300, "reference", ref[name])
    assert torch.equal(effective_weight(module).reshape(-1)[idx], ref[name].reshape(-1)[idx])
    assert canonical_init("magnitude") == "reference"
    with pytest.raises(UnknownChoiceError):
        canonical_init("ones")


@pytest.mark.parametrize("init", ["kaiming", "xavier"])
def test_random_inits_follow_their_bounds(init):
    _, sparse = _sparse_pair(0.99)
    module = dict(sparse.named_modules())["layer3.1.conv1"]
    fan_in, fan_out = fan_in_out(module.weight_orig)
    assert (fan_in, fan_out) == (64 * 9, 64 * 9)
    bound = math.sqrt(6 / fan_in) if init == "kaiming" else math.sqrt(6 / (fan_in + fan_out))
    idx = regrow_layer(module, torch.rand(module.weight_mask.shape), 20000, init,
                       generator=torch.Generator().manual_seed(0))
    vals = effective_weight(module).reshape(-1)[idx]
    assert vals.abs().max() <= bound
    assert vals.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # uniform(-b, b)


def test_allocation_lowers_sparsity_by_exactly_the_regrown_count():
    _, sparse = _sparse_pair(0.95)
    total, _, pruned = count_pruned_params(sparse)
    names = [n for n, _ in masked_modules(sparse)]
    caps = layer_capacities(sparse, names)
    sal = {n: torch.rand(m.weight_mask.shape) for n, m in masked_modules(sparse)}
    alloc = {"conv1": 10_000, "layer2.0.conv1": 700, "linear": 5}
    regrown = apply_allocation(sparse, alloc, sal)
    expected = min(10_000, caps["conv1"]) + 700 + 5
    assert sum(v.numel() for v in regrown.values()) == expected
    assert count_pruned_params(sparse)[2] == pruned - expected


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_episode_lr_schedule(schedule, monkeypatch):
    """The mini-finetune keeps the published constant lr, or anneals it to 0 over exactly its steps."""
    import torch.nn as nn

    import utils.regrowth.proxies as proxies
    from utils.regrowth.weights import WeightRegrower
    from utils.regrowth.env import RegrowthEnv

    torch.manual_seed(0)
    model = add_masks(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))
    PRUNERS["glob"](model, 0.5)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
    lrs, real = [], proxies.finetune

    def recording_finetune(*a, **k):
        opt = a[3]
        res = real(*a, after_step=lambda m: lrs.append(opt.param_groups[0]["lr"]), **k)
        lrs.append(opt.param_groups[0]["lr"])  # after the last scheduler step
        return res

    monkeypatch.setattr(proxies, "finetune", recording_finetune)
    saliency = {n: torch.rand(m.weight_mask.shape) for n, m in masked_modules(model)}
    from utils.training import clone_state

    from utils.runtime import Precision

    env = RegrowthEnv(model, clone_state(model), WeightRegrower(saliency, None, "zero"), batches, batches, "cpu",
                      Precision(), proxies.MiniFinetuneProxy(5, schedule, lr=1e-3), lambda s: 0.0, 0.0, 100, 0)
    env.evaluate({"0": 2}, 2, 0)
    assert len(lrs) == 6  # 5 steps (3 + 2 over two passes) + the final value
    if schedule == "constant":
        assert lrs == [1e-3] * 6
    else:
        expected = [1e-3 * (1 + math.cos(math.pi * t / 5)) / 2 for t in range(1, 6)]
        assert lrs[:5] == pytest.approx(expected, abs=1e-9) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(Exception, match="schedule"):
        proxies.MiniFinetuneProxy(5, "step")


def test_reward_repeats_average_runs_with_consecutive_seeds():
    """repeats=K scores the mean of the K single-run accuracies of seeds seed .. seed+K-1, all from the
    same regrown state, and keeps the first run's finetuned state."""
    import torch.nn as nn

    from utils.regrowth.weights import WeightRegrower
    from utils.regrowth.env import RegrowthEnv
    from utils.regrowth.proxies import MiniFinetuneProxy
    from utils.runtime import Precision
    from utils.training import clone_state

    torch.manual_seed(0)
    model = add_masks(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))
    PRUNERS["glob"](model, 0.6)
    data = [(torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))) for _ in range(4)]
    val = [(torch.randn(64, 3, 8, 8), torch.randint(0, 3, (64,)))]
    saliency = {n: torch.rand(m.weight_mask.shape) for n, m in masked_modules(model)}
    start = clone_state(model)

    class Shuffled(list):  # the data order follows the seed the env sets, as the real loaders' does
        def __iter__(self):
            return iter([list.__getitem__(self, i) for i in torch.randperm(len(self))])

    def env(seed, repeats):
        return RegrowthEnv(model, start, WeightRegrower(saliency, None, "zero"), Shuffled(data), val, "cpu",
                           Precision(), MiniFinetuneProxy(3, repeats=repeats, lr=0.05), lambda s: 10.0, 0.0, 100, seed)

    singles = [env(7 + k, 1).evaluate({"0": 5}, 5, 0) for k in range(3)]
    assert len({r.val_acc for r in singles}) > 1  # the seeds really give different runs
    both = env(7, 3).evaluate({"0": 5}, 5, 0)
    assert both.val_acc == pytest.approx(sum(r.val_acc for r in singles) / 3)
    assert both.reward == pytest.approx((both.val_acc - 10.0) / 100)
    assert all(torch.equal(both.post_state[k], singles[0].post_state[k]) for k in both.post_state)
    assert all(torch.equal(both.pre_state[k], singles[0].pre_state[k]) for k in both.pre_state)
    with pytest.raises(Exception, match="repeats"):
        env(7, 0)
