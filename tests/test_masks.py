"""Masks: counts, per-layer table, export, and masked weights staying exactly zero while training."""
import pytest
import torch
import torch.nn.functional as F

from models import model_loader
from utils.masks import (add_masks, count_pruned_params, export_plain_model, format_layer_table, layer_table,
                         masked_modules, model_sparsity, prunable_modules, unmasked_state_dict)
from utils.pruners import PRUNERS
from utils.runtime import Precision
from utils.training import adamw_finetune_optimizer, train_one_epoch


def test_count_pruned_params_matches_mask_zeros(tiny_net):
    model = add_masks(tiny_net)
    PRUNERS["glob"](model, 0.6)
    total, surviving, pruned = count_pruned_params(model)
    zeros = sum(int((m.weight_mask == 0).sum()) for _, m in masked_modules(model))
    assert pruned == zeros and total == sum(m.weight_orig.numel() for _, m in masked_modules(model))
    assert surviving == total - zeros
    assert model_sparsity(model) == pytest.approx(zeros / total)
    rows = layer_table(model)
    assert [r.name for r in rows] == ["conv1", "conv2", "conv3", "fc"]
    assert sum(r.capacity for r in rows) == pruned
    assert "TOTAL" in format_layer_table(rows)


def test_prunable_set_excludes_bias_and_batchnorm():
    model = model_loader("vgg16")
    total = sum(m.weight.numel() for _, m in prunable_modules(model))
    assert total == 14_715_584  # convs carry biases in VGG16; those are not counted


@pytest.mark.parametrize("precision", [Precision(), Precision(torch.bfloat16, True)], ids=["fp32", "bf16_cl"])
def test_masked_weights_stay_zero_through_adamw(tiny_net, precision):
    model = add_masks(tiny_net)
    PRUNERS["lamp"](model, 0.7)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    masks = [m.weight_mask.clone() for _, m in masked_modules(model)]
    x = torch.randn(64, 3, 8, 8)
    y = torch.randint(0, 10, (64,))
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    opt = adamw_finetune_optimizer(model, lr=1e-2)
    for _ in range(3):
        train_one_epoch(model, loader, opt, "cpu", precision)
    for (_, m), mask in zip(masked_modules(model), masks):
        assert torch.equal(m.weight_mask, mask)  # training never edits a mask
        assert torch.all(m.weight[mask == 0] == 0)  # the effective weight stays exactly zero
        assert torch.any(m.weight_orig[mask == 1] != 0)


def test_export_bakes_masks_into_plain_weights(tiny_net):
    model = add_masks(tiny_net)
    PRUNERS["glob"](model, 0.5)
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    ref = model(x)
    plain_sd = unmasked_state_dict(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in plain_sd)
    export_plain_model(model)
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_modules(model))
    assert torch.allclose(model(x), ref)
    assert all(torch.equal(plain_sd[k], v) for k, v in model.state_dict().items())


def test_gradients_of_masked_entries_are_zero(tiny_net):
    model = add_masks(tiny_net)
    PRUNERS["unif"](model, 0.5)
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    for _, m in masked_modules(model):
        assert torch.all(m.weight_orig.grad[m.weight_mask == 0] == 0)
