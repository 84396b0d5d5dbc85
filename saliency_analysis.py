"""Per-class saliency of chosen layers (first order, Hutchinson second order, Fisher): which weights matter
for which class. The formulas are in utils/class_saliency.py.

    python saliency_analysis.py --m_name resnet20 --ckpt resnet20/checkpoint/ckpt.pth \
        --dataset CIFAR10 --data_dir data --layers conv1 layer3.2.conv2 --orders first second fisher

Writes {out_dir} (default {work_dir}/{m_name}/saliency_analysis/): per_class_saliency.csv (per layer, order
and class: mean, median, max, share of the layer's saliency, top-1% overlap with the other classes), the
log-saliency distribution and class x layer heat-map PNGs.
"""
import argparse
import os

from models import MODEL_HELP, canonical_model_name
from utils import cli, paths
from utils.checkpoints import model_from_checkpoint
from utils.class_saliency import ORDERS, class_statistics, per_class_saliency, plot_saliency
from utils.hparams import DataHparams, RuntimeHparams
from utils.masks import prunable_modules
from utils.progress import log
from utils.records import write_csv
from utils.runtime import resolve_device, set_seed


def get_args_parser():
    p = argparse.ArgumentParser("saliency_analysis.py", description="Per-class saliency analysis")
    p.add_argument("--m_name", default="resnet20", help=MODEL_HELP)
    p.add_argument("--ckpt", default=None, help="checkpoint (default {work_dir}/{m_name}/checkpoint/ckpt.pth)")
    p.add_argument("--work_dir", default=".")
    p.add_argument("--layers", nargs="+", default=None, help="layers (default: first, middle and last prunable layer)")
    p.add_argument("--orders", nargs="+", default=["first", "second"], choices=ORDERS)
    p.add_argument("--max_batches", type=int, default=20, help="validation batches used")
    p.add_argument("--hutchinson_samples", type=int, default=1)
    p.add_argument("--out_dir", default=None, help="default {work_dir}/{m_name}/saliency_analysis")
    p.add_argument("--trust_pickle", action="store_true")
    DataHparams.add_args(p)
    RuntimeHparams.add_args(p, fixed={"compile": False}, omit=("precision",))  # Hessian-vector products in fp32
    return p


def main(args):
    args.m_name = canonical_model_name(args.m_name)
    cli.print_args(args, "saliency_analysis.py")
    device = resolve_device(args.device)
    set_seed(args.seed)
    ckpt = args.ckpt or paths.dense_checkpoint(args.work_dir, args.m_name)
    model, _ = model_from_checkpoint(ckpt, args.m_name, trust_pickle=args.trust_pickle)
    model = model.to(device)
    names = [n for n, _ in prunable_modules(model)]
    layers = args.layers or list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))
    data = cli.build_data(DataHparams.from_args(args), args.seed, device, args.m_name)
    out_dir = args.out_dir or os.path.join(args.work_dir, args.m_name, "saliency_analysis")
    os.makedirs(out_dir, exist_ok=True)
    sal = per_class_saliency(model, data.val, layers, data.spec.num_classes, device, args.orders, args.max_batches,
                             args.hutchinson_samples, args.seed)
    rows = class_statistics(sal)
    csv_path = write_csv(os.path.join(out_dir, "per_class_saliency.csv"), rows)
    pngs = plot_saliency(sal, out_dir)
    for order in args.orders:
        for layer in layers:
            means = [r["mean"] for r in rows if r["order"] == order and r["layer"] == layer]
            log(f"{order:>6} {layer:<22} class means {min(means):.2e} .. {max(means):.2e} "
                f"(max/min {max(means) / min(means) if min(means) > 0 else float('inf'):.2f})")
    log(f"wrote {csv_path}, " + ", ".join(pngs))
    return rows


if __name__ == "__main__":
    cli.run(main, get_args_parser())
