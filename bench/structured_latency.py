"""Structured pruning speed-up: dense vs masked vs compact (filters removed) models on this CPU.

For each model and channel sparsity, prunes filters (l1, local: the same fraction of every channel
group) from a dense model (random init, or --dense_ckpt), exports the compact model, checks that it
computes what the masked model computes, and times one eval forward pass (fp32, median of --repeats)
at batch 1 and 64. Prints params and MACs (prunable layers) and latency ratios, all measured in one run.

    python bench/structured_latency.py --models vgg16 resnet20 --sparsities 0.5 0.9
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import model_loader, model_spec  # noqa: E402
from utils.compact import check_equivalence, export_compact, latency_ms  # noqa: E402
from utils.costs import model_cost  # noqa: E402
from utils.structured import add_structured_masks, channel_sparsity  # noqa: E402
from utils.structured_importance import prune_channels  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet20"])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, fp32 eval, median of {args.repeats}")
    head = (f"{'model':<9} {'target':>6} {'ch.sp':>6} {'params':>11} {'MACs (M)':>9} {'max|diff|':>9} "
            + " ".join(f"{f'b{b} dense ms':>13} {f'b{b} masked':>10} {f'b{b} compact':>11} {'speed-up':>8}"
                       for b in args.batches))
    print(head)
    for name in args.models:
        size = model_spec(name).input_size
        torch.manual_seed(0)
        dense = model_loader(name).eval()
        dense_cost = model_cost(dense, size)
        dense_ms = {b: latency_ms(dense, size, b, args.repeats) for b in args.batches}
        print(f"{name:<9} {'dense':>6} {0.0:>6.3f} {dense_cost['params']:>11,} {dense_cost['macs'] / 1e6:>9.1f} "
              f"{'-':>9} " + " ".join(f"{dense_ms[b]:>13.2f} {'-':>10} {'-':>11} {'1.00x':>8}" for b in args.batches))
        for target in args.sparsities:
            masked = model_loader(name)
            masked.load_state_dict(dense.state_dict())
            masked = add_structured_masks(masked).eval()
            prune_channels(masked, size, target, "l1")
            compact = export_compact(masked, size)
            diff = check_equivalence(masked, compact, size)
            cost = model_cost(compact, size)
            cells = []
            for b in args.batches:
                m_ms = latency_ms(masked, size, b, args.repeats)
                c_ms = latency_ms(compact, size, b, args.repeats)
                cells.append(f"{dense_ms[b]:>13.2f} {m_ms:>10.2f} {c_ms:>11.2f} {dense_ms[b] / c_ms:>7.2f}x")
            print(f"{name:<9} {target:>6.2f} {channel_sparsity(masked):>6.3f} {cost['params']:>11,} "
                  f"{cost['macs'] / 1e6:>9.1f} {diff:>9.1e} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
