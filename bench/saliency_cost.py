"""The saliency pass vs one plain training epoch over the same batches.

Saliency = mean over batches of (dL/dθ)²·θ² for every prunable layer of the dense model, one backward
per batch (utils.saliency.weight_saliency, fp32, channels_last). The reference is a textbook fp32
training epoch (default layout, SGD) over the same batches. Prints both times and the ratio.

    python bench/saliency_cost.py --data_dir data --batches 100
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.data_loader import data_loader  # noqa: E402
from models import model_loader  # noqa: E402
from utils.masks import prunable_modules  # noqa: E402
from utils.runtime import Precision, to_device  # noqa: E402
from utils.saliency import weight_saliency  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m_name", default="resnet20")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--batches", type=int, default=100)
    args = p.parse_args()
    name = "CIFAR10" if os.path.isdir(os.path.join(args.data_dir, "cifar10")) else "digits"
    data = data_loader(args.data_dir, dataset=name, download=False)
    batches = []
    for i, b in enumerate(data.train):
        if i >= args.batches:
            break
        batches.append(b)
    torch.manual_seed(0)
    plain = model_loader(args.m_name)
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    plain.train()
    t0 = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(plain(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_plain = time.perf_counter() - t0
    dense = to_device(model_loader(args.m_name), "cpu", Precision(None, True))
    names = [n for n, _ in prunable_modules(dense)]
    t0 = time.perf_counter()
    weight_saliency(dense, batches, names, "cpu", precision=Precision(None, True))
    t_sal = time.perf_counter() - t0
    print(f"{args.m_name}, {len(batches)} batches of {len(batches[0][1])} ({name}), {len(names)} layers")
    print(f"  plain fp32 training epoch       {t_plain:8.2f} s")
    print(f"  saliency pass (all layers)      {t_sal:8.2f} s   ratio {t_sal / t_plain:.2f}x")


if __name__ == "__main__":
    main()
