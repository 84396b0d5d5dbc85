"""Data loading: in-memory uint8 tensors with batched augmentation vs the torchvision-transform DataLoader.

Iterates one epoch of the augmented training loader (no model) with each backend and prints images/s
and the ratio. Uses the CIFAR-10 image-folder copy under --data_dir when present, else digits.

    python bench/data_loading.py --data_dir data --workers 0 2
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.data_loader import data_loader  # noqa: E402


def epoch_rate(loader):
    n, t0 = 0, time.perf_counter()
    for _, y in loader:
        n += len(y)
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="data")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch_size", type=int, default=128)
    args = p.parse_args()
    name = "CIFAR10" if os.path.isdir(os.path.join(args.data_dir, "cifar10")) else "digits"
    tensor = data_loader(args.data_dir, dataset=name, backend="tensor", batch_size=args.batch_size, download=False)
    print(f"{tensor.describe()}; one augmented training epoch, batch {args.batch_size}")
    base = epoch_rate(tensor.train)
    print(f"  {'in-memory tensors, batched augmentation':<48} {base:10.0f} images/s")
    for w in args.workers:
        loader = data_loader(args.data_dir, dataset=name, backend="loader", num_workers=w,
                             batch_size=args.batch_size, download=False)
        rate = epoch_rate(loader.train)
        print(f"  {f'torchvision transforms, DataLoader, {w} workers':<48} {rate:10.0f} images/s   "
              f"tensors are {base / rate:.1f}x faster")


if __name__ == "__main__":
    main()
