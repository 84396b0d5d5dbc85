"""Pieces of the regrowth pipeline checked against independent computations: the pruning curve's
interpolation, the final finetune's warm-up + cosine schedule, `--finetune_scope regrown` under AdamW, and the
iterative search's guard layer."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.controller import RegrowthAgent, sample_allocation
from utils.masks import add_masks, masked_modules
from utils.pruning_curve import PruningCurve
from utils.regrowth.final_finetune import cosine_with_warmup, restrict_to_regrown


def test_pruning_curve_interpolates_linearly_and_clamps_outside():
    pts = [(0.5, 90.0), (0.8, 85.0), (0.9, 70.0), (0.99, 20.0)]
    curve = PruningCurve(pts, "val_acc", ["a", "b", "c", "d"])
    xs, ys = zip(*pts)
    for s in [0.0, 0.3, 0.5, 0.6, 0.8, 0.85, 0.9, 0.95, 0.99, 0.995, 1.0]:
        assert curve(s) == pytest.approx(float(np.interp(s, xs, ys)), abs=1e-6), s  # np.interp clamps too
    assert curve(0.1) == 90.0 and curve(0.999) == 20.0  # clamped to the end points, not extrapolated
    assert PruningCurve([(0.9, 70.0)], "val_acc", ["a"])(0.5) == 70.0  # one point: a constant


def test_warmup_cosine_schedule_matches_its_formula():
    total, base = 200, 3e-4
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=base)
    sched = cosine_with_warmup(opt, total)
    warmup = 10  # 5% of 200
    lrs = []
    for _ in range(total + 5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [base * (s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * min((s - warmup) / (total - warmup), 1))))
                for s in range(total + 5)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert lrs[0] == 0.0 and lrs[warmup] == pytest.approx(base)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # never rises after the warm-up
    assert lrs[total] == pytest.approx(0.0, abs=1e-15) and lrs[-1] == pytest.approx(0.0, abs=1e-15)  # stays at 0


def test_finetune_scope_regrown_leaves_every_other_weight_bit_identical_under_adamw(tiny_net):
    """Only the regrown entries move; AdamW's decoupled weight decay would move every entry of a trainable
    tensor, so the hook must put the others back exactly, and frozen tensors (BN, other layers) must not move."""
    model = add_masks(tiny_net)
    torch.manual_seed(1)
    conv2 = dict(masked_modules(model))["conv2"]
    regrown = torch.tensor([0, 5, 17, 300, conv2.weight_orig.numel() - 1])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    after_step = restrict_to_regrown(model, {"conv2": regrown, "conv3": torch.tensor([], dtype=torch.long)})
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is conv2.weight_orig  # an empty index set freezes its layer
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    model.eval()  # BN statistics are buffers a train-mode forward would update; this test is about weights
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        after_step(model)
    now = model.state_dict()
    for key, old in before.items():
        if key != "conv2.weight_orig":
            assert torch.equal(now[key], old), key
    moved = (now["conv2.weight_orig"] != before["conv2.weight_orig"]).flatten()
    assert moved.nonzero().flatten().tolist() == regrown.tolist()  # all regrown entries moved, nothing else


def test_iterative_guard_layer_gets_one_unit_only_when_everything_rounds_to_zero():
    torch.manual_seed(0)
    agent = RegrowthAgent(10, 8, budget_space_size=2)
    with torch.no_grad():  # greedy picks the smallest option (a count of 0) at every layer
        agent.alloc_head.weight.zero_()
        agent.alloc_head.bias.copy_(torch.linspace(5, -5, 10))
    names, caps = ["a", "b", "c"], {"a": 100, "b": 4, "c": 7}
    kw = dict(budget_options=[1e-4, 2e-4], total_weights=10_000, position="iterative", greedy=True)
    plain = sample_allocation(agent, names, caps, **kw)
    assert plain.allocation == {} and not plain.guard_used  # round(j/10 * 1) = 0 for the smallest ratios
    guarded = sample_allocation(agent, names, caps, guard_layer="b", **kw)
    assert guarded.allocation == {"b": 1} and guarded.guard_used and guarded.counts == [0, 1, 0]
    assert torch.equal(guarded.log_prob, plain.log_prob)  # the safeguard is not the policy's action
    in_units = sample_allocation(agent, names, caps, guard_layer="c", units={"a": 1, "b": 1, "c": 3}, **kw)
    assert in_units.allocation == {"c": 3}  # a coupled group grows by whole units
    full = sample_allocation(agent, names, {"a": 100, "b": 0, "c": 7}, guard_layer="b", **kw)
    assert full.allocation == {} and not full.guard_used  # no capacity left in the guard layer: nothing to restore
