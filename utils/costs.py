"""Model cost: parameters and multiply-accumulate operations (MACs), dense and counting only non-zeros.

MACs of one image through every Conv2d / Linear, measured with forward hooks at the model's input
size: a conv costs (output positions) x (weights per output channel) x (output channels) when
dense, and (output positions) x (non-zero weights) when zero weights are skipped. BatchNorm,
activations and pooling are left out (they are a few percent of a CNN's cost).
"""
from dataclasses import dataclass

import torch

from utils.masks import effective_weight, prunable_modules


@dataclass
class LayerCost:
    name: str
    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int
    out_channels: int
    alive_channels: int


@torch.no_grad()
def output_positions(model, input_size, device="cpu"):
    """{prunable layer: output positions per image} (H x W of a conv's output, 1 for a Linear), from one forward."""
    positions = {}

    def hook(name):
        def record(module, _inp, out):
            positions[name] = out.shape[2] * out.shape[3] if out.dim() == 4 else 1
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in prunable_modules(model)]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, 3, input_size, input_size, device=device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return positions


@torch.no_grad()
def layer_costs(model, input_size, device="cpu"):
    """Per prunable layer LayerCost for one input image of input_size x input_size."""
    spatial = output_positions(model, input_size, device)
    mods = prunable_modules(model)
    costs = []
    for name, m in mods:
        w = effective_weight(m)
        nnz = int((w != 0).sum().item())
        positions = spatial.get(name, 0)
        alive = int((w.reshape(w.shape[0], -1) != 0).any(1).sum().item())
        costs.append(LayerCost(name, w.numel(), nnz, positions * w.numel(), positions * nnz, w.shape[0], alive))
    return costs


def model_cost(model, input_size, device="cpu"):
    """Totals: params, nonzero_params, macs, nonzero_macs over the prunable layers, plus all parameters."""
    costs = layer_costs(model, input_size, device)
    return {
        "params": sum(c.params for c in costs),
        "nonzero_params": sum(c.nonzero_params for c in costs),
        "macs": sum(c.macs for c in costs),
        "nonzero_macs": sum(c.nonzero_macs for c in costs),
        "all_parameters": sum(p.numel() for n, p in model.named_parameters()),
    }
