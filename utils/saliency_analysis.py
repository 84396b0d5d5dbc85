"""Per-class saliency: which weights matter for which class (FairPrune-style analysis).

For every class c and chosen layer, over the samples of class c only:

* first order:  S1_c(θ) = |E[g_c] ⊙ θ|, the first-order Taylor estimate of the loss change when θ is
  removed (g_c = gradient of the class-c mean loss of a batch);
* second order: S2_c(θ) = ½ · diag(H_c) ⊙ θ², the second-order (OBD) term, with the Hessian diagonal of
  the class-c loss estimated by Hutchinson's method, diag(H) ≈ E_z[z ⊙ Hz] with Rademacher z
  (`--hutchinson_samples` Hessian-vector products per batch), which — unlike the squared-gradient
  (empirical Fisher) proxy the published analyser used — can be negative at non-convex points;
* fisher:       S_F,c(θ) = E[g_c²] ⊙ θ², the published proxy (the same formula as the regrowth saliency).

Statistics per layer and class (mean, median, max, share of the layer's total saliency, the class's
overlap with the other classes in its top-1% weights) go to a CSV; plots show per-class distributions
of log-saliency for each layer and a class x layer heat map of mean saliency.

    python -m utils.saliency_analysis --m_name resnet20 --ckpt resnet20/checkpoint/ckpt.pth \
        --dataset CIFAR10 --data_dir data --layers conv1 layer3.2.conv2 --orders first second fisher
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

ORDERS = ("first", "second", "fisher")


def _params(model, layers):
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules or not hasattr(modules[n], "weight")]
    if missing:
        from utils.errors import BridgeError

        raise BridgeError(f"no weight layer named {', '.join(missing)}")
    return [modules[n].weight_orig if hasattr(modules[n], "weight_orig") else modules[n].weight for n in layers]


def per_class_saliency(model, loader, layers, num_classes, device, orders=ORDERS, max_batches=None,
                       hutchinson_samples=1, seed=0):
    """{order: {layer: tensor (num_classes, *weight.shape)}} averaged over the batches containing each class."""
    params = _params(model, layers)
    weights = [p.detach().float() for p in params]
    acc = {o: [torch.zeros((num_classes,) + tuple(w.shape), device=w.device) for w in weights] for o in orders}
    grad_sum = [torch.zeros((num_classes,) + tuple(w.shape), device=w.device) for w in weights]
    counts = torch.zeros(num_classes)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    for b, (x, y) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        for c in torch.unique(y).tolist():
            sel = y == c
            loss = F.cross_entropy(model(x[sel]), y[sel])
            need_hvp = "second" in orders
            grads = torch.autograd.grad(loss, params, create_graph=need_hvp)
            for j, g in enumerate(grads):
                grad_sum[j][c] += g.detach()
                if "fisher" in orders:
                    acc["fisher"][j][c] += g.detach() ** 2 * weights[j] ** 2
            if need_hvp:
                for _ in range(hutchinson_samples):
                    zs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype) for p in params]
                    hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=True)
                    for j, (z, h) in enumerate(zip(zs, hz)):
                        acc["second"][j][c] += 0.5 * (z * h).detach() * weights[j] ** 2 / hutchinson_samples
            counts[c] += 1
    model.train(was_training)
    denom = counts.clamp_min(1).view(-1, *([1] * weights[0].dim())).to(weights[0].device)
    out = {}
    for o in orders:
        if o == "first":
            out[o] = {n: ((grad_sum[j] / denom.view(-1, *([1] * weights[j].dim()))).abs() * weights[j].abs()).cpu()
                      for j, n in enumerate(layers)}
        else:
            out[o] = {n: (acc[o][j] / denom.view(-1, *([1] * weights[j].dim()))).cpu() for j, n in enumerate(layers)}
    return out


def class_statistics(saliency, top_fraction=0.01):
    """Rows of per (order, layer, class) statistics of a per_class_saliency result."""
    rows = []
    for order, layers in saliency.items():
        for layer, s in layers.items():
            flat = s.reshape(s.shape[0], -1).double()
            k = max(1, int(top_fraction * flat.shape[1]))
            tops = [set(torch.topk(flat[c], k).indices.tolist()) for c in range(flat.shape[0])]
            total = flat.sum().abs().item() or 1.0
            for c in range(flat.shape[0]):
                others = set().union(*(tops[d] for d in range(len(tops)) if d != c)) if len(tops) > 1 else set()
                rows.append({"order": order, "layer": layer, "class": c, "mean": flat[c].mean().item(),
                             "median": flat[c].median().item(), "max": flat[c].max().item(),
                             "share_of_layer": flat[c].sum().item() / total,
                             f"top{top_fraction:g}_overlap_with_other_classes": len(tops[c] & others) / k})
    return rows


def plot_saliency(saliency, out_dir, class_names=None):
    """Per order: per-layer box plots of log10 saliency by class, and a class x layer heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for order, layers in saliency.items():
        names = list(layers)
        n_classes = next(iter(layers.values())).shape[0]
        labels = class_names or [str(c) for c in range(n_classes)]
        fig, axes = plt.subplots(len(names), 1, figsize=(max(6, 0.6 * n_classes + 2), 2.4 * len(names)), squeeze=False)
        for ax, layer in zip(axes[:, 0], names):
            flat = layers[layer].reshape(n_classes, -1).abs().clamp_min(1e-30).log10()
            ax.boxplot([f.numpy() for f in flat], showfliers=False)
            ax.set_xticks(range(1, n_classes + 1))
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_ylabel("log10 |saliency|", fontsize=8)
            ax.set_title(f"{order}: {layer}", fontsize=9)
        fig.tight_layout()
        p = os.path.join(out_dir, f"saliency_{order}_distributions.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
        heat = torch.stack([layers[n].reshape(n_classes, -1).abs().mean(1) for n in names], 1)
        heat = heat / heat.sum(0, keepdim=True).clamp_min(1e-30)
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 0.35 * n_classes + 2))
        im = ax.imshow(heat.numpy(), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n_classes))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_title(f"{order}: share of each layer's mean |saliency| per class", fontsize=9)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        p = os.path.join(out_dir, f"saliency_{order}_heatmap.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def get_args_parser():
    from models import MODEL_NAMES
    from utils import cli

    p = argparse.ArgumentParser("python -m utils.saliency_analysis", description="Per-class saliency analysis")
    p.add_argument("--m_name", default="resnet20", help=f"model: {', '.join(MODEL_NAMES)}")
    p.add_argument("--ckpt", default=None, help="checkpoint (default {work_dir}/{m_name}/checkpoint/ckpt.pth)")
    p.add_argument("--work_dir", default=".")
    p.add_argument("--layers", nargs="+", default=None, help="layers (default: first, middle and last prunable layer)")
    p.add_argument("--orders", nargs="+", default=["first", "second"], choices=ORDERS)
    p.add_argument("--max_batches", type=int, default=20, help="validation batches used")
    p.add_argument("--hutchinson_samples", type=int, default=1)
    p.add_argument("--out_dir", default=None, help="default {work_dir}/{m_name}/saliency_analysis")
    p.add_argument("--trust_pickle", action="store_true")
    cli.add_data_args(p, batch_size=128)
    cli.add_runtime_args(p, trains=False, precision=False)  # Hessian-vector products in fp32
    return p


def main(args):
    from models import canonical_model_name
    from utils import cli
    from utils.checkpoints import model_from_checkpoint
    from utils.masks import prunable_modules
    from utils.progress import log
    from utils.records import write_csv
    from utils.runtime import resolve_device, set_seed

    args.m_name = canonical_model_name(args.m_name)
    cli.print_args(args, "saliency_analysis")
    device = resolve_device(args.device)
    set_seed(args.seed)
    ckpt = args.ckpt or os.path.join(args.work_dir, args.m_name, "checkpoint", "ckpt.pth")
    model, _ = model_from_checkpoint(ckpt, args.m_name, trust_pickle=args.trust_pickle)
    model = model.to(device)
    names = [n for n, _ in prunable_modules(model)]
    layers = args.layers or list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))
    data = cli.build_data(args, device)
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
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from utils import cli as _cli

    _cli.run(main, get_args_parser())
