"""Structured pruning speed-up: dense vs masked vs compact (filters removed) models on this CPU, in PyTorch
and in onnxruntime.

For each model and channel sparsity, prunes filters (l1, local: the same fraction of every channel
group) from a dense model (random init), exports the compact model, checks that it computes what the
masked model computes, exports it to ONNX, and times one eval forward pass (fp32) at each batch size with
torch.utils.benchmark's blocked_autorange (median and IQR; the same timer for onnxruntime). Prints params
and MACs and every latency, all measured in one run.

    python bench/structured_latency.py --models vgg16 resnet20 --sparsities 0.5 0.9
"""
import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import model_loader, model_spec  # noqa: E402
from utils.compact import check_equivalence, export_compact, torch_latency  # noqa: E402
from utils.costs import model_cost  # noqa: E402
from utils.export import export_onnx, onnx_latency  # noqa: E402
from utils.structured import add_structured_masks, channel_sparsity  # noqa: E402
from utils.structured_importance import prune_channels  # noqa: E402


def cell(latency):
    return f"{latency.median_ms:.2f}±{latency.iqr_ms:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet20"])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--min_run_time", type=float, default=0.5, help="seconds of timed blocks per measurement")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, fp32 eval; latency ms: median ± IQR of "
          f"torch.utils.benchmark blocks (>= {args.min_run_time} s each); ort = onnxruntime on the compact ONNX")
    print(f"{'model':<9} {'ch.sp':>6} {'params':>11} {'MACs (M)':>9} {'max|diff|':>9} {'batch':>5} {'dense':>12} "
          f"{'masked':>12} {'compact':>12} {'compact ort':>12} {'speed-up':>8} {'ort':>6}")
    tmp = tempfile.mkdtemp(prefix="latency_")
    for name in args.models:
        size = model_spec(name).input_size
        torch.manual_seed(0)
        dense = model_loader(name).eval()
        dense_cost = model_cost(dense, size)
        dense_ms = {b: torch_latency(dense, size, b, threads, args.min_run_time) for b in args.batches}
        for b in args.batches:
            print(f"{name:<9} {0.0:>6.3f} {dense_cost['params']:>11,} {dense_cost['macs'] / 1e6:>9.1f} {'-':>9} {b:>5} "
                  f"{cell(dense_ms[b]):>12} {'-':>12} {'-':>12} {'-':>12} {'1.00x':>8} {'-':>6}")
        for target in args.sparsities:
            masked = model_loader(name)
            masked.load_state_dict(dense.state_dict())
            masked = add_structured_masks(masked).eval()
            prune_channels(masked, size, target, "l1")
            compact = export_compact(masked, size)
            diff = check_equivalence(masked, compact, size)
            cost = model_cost(compact, size)
            path = export_onnx(compact, size, os.path.join(tmp, f"{name}_{target}.onnx"))
            for b in args.batches:
                m = torch_latency(masked, size, b, threads, args.min_run_time)
                c = torch_latency(compact, size, b, threads, args.min_run_time)
                o = onnx_latency(path, size, b, threads, args.min_run_time)
                print(f"{name:<9} {channel_sparsity(masked):>6.3f} {cost['params']:>11,} {cost['macs'] / 1e6:>9.1f} "
                      f"{diff:>9.1e} {b:>5} {cell(dense_ms[b]):>12} {cell(m):>12} {cell(c):>12} {cell(o):>12} "
                      f"{dense_ms[b].median_ms / c.median_ms:>7.2f}x {dense_ms[b].median_ms / o.median_ms:>5.2f}x",
                      flush=True)


if __name__ == "__main__":
    main()
