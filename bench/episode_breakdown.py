"""Where a regrowth episode's time goes: the published settings, ours by default, and --fast.

An episode = load the sparse state, regrow, mini-finetune, score. Three settings on the same sparse
resnet20 and the same allocation:
  published  torchvision-transform DataLoader, one mini-finetune epoch then the whole 10,000-image
             test set evaluated (the published episode repeats this 50 times; the shares are the same)
  default    in-memory tensor data, one epoch then the 5,000-image validation split
  --fast     in-memory tensor data, the preset's repeats x steps and lr schedule (FAST_PRESET), each
             then scored on its fixed validation subset
Prints seconds in training steps, evaluation and everything else, and the share outside training.

    python bench/episode_breakdown.py --data_dir data [--dense_ckpt ... --sparse_ckpt ...]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.data_loader import data_loader  # noqa: E402
from models import model_loader  # noqa: E402
from utils.checkpoints import model_from_checkpoint  # noqa: E402
from utils.masks import add_masks, masked_modules  # noqa: E402
from utils.pruners import PRUNERS  # noqa: E402
from utils.regrowth.weights import WeightRegrower  # noqa: E402
from utils.regrowth.hparams import FAST_PRESET  # noqa: E402
from utils.regrowth.env import RegrowthEnv  # noqa: E402
from utils.regrowth.proxies import MiniFinetuneProxy  # noqa: E402
from utils.runtime import resolve_precision, to_device  # noqa: E402
from utils.training import clone_state  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="data")
    p.add_argument("--sparse_ckpt", default=None, help="a pruned resnet20 (default: random weights pruned to 0.98)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the published setting")
    p.add_argument("--settings", nargs="+", choices=("published", "default", "fast"),
                   default=["published", "default", "fast"])
    p.add_argument("--fast_steps", type=int, nargs="+", default=[FAST_PRESET["mini_finetune_steps"]],
                   help="mini-finetune lengths of the --fast rows (default: the preset's)")
    args = p.parse_args()
    name = "CIFAR10" if os.path.isdir(os.path.join(args.data_dir, "cifar10")) else "digits"
    precision = resolve_precision("auto", "cpu")
    if args.sparse_ckpt:
        sparse, _ = model_from_checkpoint(args.sparse_ckpt, "resnet20")
    else:
        torch.manual_seed(0)
        sparse = add_masks(model_loader("resnet20"))
        PRUNERS["lamp"](sparse, 0.98)
    sparse = to_device(sparse, "cpu", precision)
    names = [n for n, _ in masked_modules(sparse)]
    saliency = {n: torch.rand(m.weight_mask.shape) for n, m in masked_modules(sparse)}
    allocation = {names[-2]: 1000, names[-4]: 1000, names[5]: 708}
    regrower = WeightRegrower(saliency, None, "zero")
    settings = []
    pub = data_loader(args.data_dir, dataset=name, backend="loader", num_workers=args.workers, download=False)
    ours = data_loader(args.data_dir, dataset=name, download=False)
    val_n = FAST_PRESET["reward_val_subset"]
    if "published" in args.settings:
        settings.append(("published (DataLoader, 1 epoch + test set)", pub.train, pub.test, len(pub.train),
                         "constant", 1))
    if "default" in args.settings:
        settings.append(("default (tensors, 1 epoch + val)", ours.train, ours.val, len(ours.train), "constant", 1))
    for steps in args.fast_steps if "fast" in args.settings else []:
        repeats = FAST_PRESET["reward_repeats"]
        settings.append((f"--fast (tensors, {repeats}x {steps} steps + {val_n} val)", ours.train,
                         ours.subset("val", val_n, 0), steps, FAST_PRESET["mini_finetune_schedule"], repeats))
    print(f"resnet20, {name}, allocation of {sum(allocation.values())} weights, precision {precision.name}")
    print(f"{'setting':<46} {'episode s':>9} {'train steps s':>13} {'data s':>7} {'eval s':>7} {'other s':>8} "
          f"{'outside training steps':>23}")
    for label, train, val, steps, schedule, repeats in settings:
        env = RegrowthEnv(to_device(model_loader("resnet20"), "cpu", precision), None, regrower, train, val, "cpu",
                          precision, MiniFinetuneProxy(steps, schedule, repeats), lambda sp: 0.0, 0.0, 270896, 0)
        env.model = add_masks(env.model)
        env.start_state = clone_state(sparse)
        t0 = time.perf_counter()
        r = env.evaluate(allocation, 2708, 0)
        total = time.perf_counter() - t0
        train_s, data_s, eval_s = (r.timings[k] for k in ("finetune_train_s", "finetune_data_s", "finetune_eval_s"))
        print(f"{label:<46} {total:>9.1f} {train_s:>13.1f} {data_s:>7.1f} {eval_s:>7.1f} "
              f"{total - train_s - data_s - eval_s:>8.2f} {100 * (total - train_s) / total:>22.1f}%", flush=True)


if __name__ == "__main__":
    main()
