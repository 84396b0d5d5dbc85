"""Count the host-device synchronisations of the project's training steps on CUDA.

Trains resnet20 on digits with the project's loader (in-memory tensors on the GPU, augmented there)
and train step (utils.training.train_one_epoch, --precision auto), first `--steps` warm-up steps
(cuDNN autotuning, allocator growth, lazy initialisation), then `--steps` more under
torch.cuda.set_sync_debug_mode("warn"), which warns on every synchronising CUDA call. Prints the
count, syncs per step and where they came from, and exits 1 above `--max_per_step`.

Expected: the two .item() at the end of train_one_epoch (loss and accuracy) and nothing per step,
so ~0.1 per step over 20 steps; the loader used to add 2-3 blocking copies per step.

    python scripts/count_host_syncs.py                  # CUDA
    python scripts/count_host_syncs.py --allow_cpu      # no GPU: runs the steps on the CPU, counts nothing, exit 0
"""
import argparse
import collections
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.data_loader import data_loader  # noqa: E402
from models import model_loader  # noqa: E402
from utils.runtime import configure_backends, resolve_precision, to_device  # noqa: E402
from utils.training import train_one_epoch  # noqa: E402

SYNC_MESSAGE = "synchroniz"  # "called a synchronizing CUDA operation"


def count_sync_warnings(fn):
    """Run fn() with CUDA sync debugging on 'warn'; returns (fn's result, [(file:line, message)] of the syncs)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [(f"{os.path.relpath(w.filename)}:{w.lineno}", str(w.message).splitlines()[0]) for w in caught
             if SYNC_MESSAGE in str(w.message).lower()]
    return result, syncs


def get_args_parser():
    p = argparse.ArgumentParser("count_host_syncs.py", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="steps counted (after as many warm-up steps)")
    p.add_argument("--batch_size", type=int, default=64, help="64: one digits epoch holds 20 steps")
    p.add_argument("--max_per_step", type=float, default=3.0, help="exit 1 above this many syncs per step")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--allow_cpu", action="store_true",
                   help="without CUDA: run the steps on the CPU as a dry run and exit 0 (syncs are not counted)")
    return p


def main(args):
    cuda = torch.device(args.device).type == "cuda" and torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("count_host_syncs: needs a CUDA GPU (pass --allow_cpu for a CPU dry run)")
        return 2
    device = torch.device(args.device) if cuda else torch.device("cpu")
    configure_backends()  # the kernel choices the stage scripts make (cli.run)
    torch.manual_seed(0)
    precision = resolve_precision(args.precision, device)
    data = data_loader(dataset="digits", device=device, batch_size=args.batch_size, seed=0)
    model = to_device(model_loader("resnet20"), device, precision)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = min(args.steps, len(data.train))
    print(f"resnet20 on digits, {device}, precision {precision.name}, batch {args.batch_size}: "
          f"{steps} warm-up steps, then {steps} counted")
    train_one_epoch(model, data.train, opt, device, precision, max_steps=steps)  # warm-up
    if not cuda:
        stats = train_one_epoch(model, data.train, opt, device, precision, max_steps=steps)
        print(f"count_host_syncs: needs CUDA to count host syncs; ran {stats.steps} CPU steps as a dry run "
              f"(loss {stats.loss:.3f}), counted nothing")
        return 0
    torch.cuda.synchronize(device)
    stats, syncs = count_sync_warnings(lambda: train_one_epoch(model, data.train, opt, device, precision,
                                                               max_steps=steps))
    per_step = len(syncs) / max(stats.steps, 1)
    print(f"host syncs in {stats.steps} training steps: {len(syncs)} ({per_step:.2f} per step; limit {args.max_per_step})")
    for where, n in collections.Counter(w for w, _ in syncs).most_common(8):
        print(f"  {n:>4}  {where}")
    if per_step > args.max_per_step:
        print(f"FAIL: {per_step:.2f} host syncs per step > {args.max_per_step}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
