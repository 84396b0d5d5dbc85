"""MAC and parameter counts against hand computations."""
import torch

from models import model_loader
from utils.costs import layer_costs, model_cost
from utils.masks import add_masks
from utils.pruners import PRUNERS


def test_resnet20_macs_by_hand():
    stem = 32 * 32 * 27 * 16
    stage1 = 6 * (32 * 32) * (16 * 9) * 16
    stage2 = (16 * 16) * (16 * 9) * 32 + 5 * (16 * 16) * (32 * 9) * 32 + (16 * 16) * 16 * 32
    stage3 = (8 * 8) * (32 * 9) * 64 + 5 * (8 * 8) * (64 * 9) * 64 + (8 * 8) * 32 * 64
    linear = 64 * 10
    cost = model_cost(model_loader("resnet20"), 32)
    assert cost["macs"] == stem + stage1 + stage2 + stage3 + linear == 40_813_184
    assert cost["params"] == 270_896


def test_nonzero_macs_follow_the_masks():
    torch.manual_seed(0)
    model = add_masks(model_loader("resnet20"))
    PRUNERS["unif"](model, 0.75)
    for c in layer_costs(model, 32):
        positions = c.macs // c.params
        assert c.nonzero_macs == positions * c.nonzero_params
        assert abs(c.nonzero_params - c.params * 0.25) <= 1
