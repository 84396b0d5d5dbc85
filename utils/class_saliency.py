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

The stage that runs it from the shell is saliency_analysis.py.
"""
import os

import torch
import torch.nn.functional as F

from utils.errors import BridgeError

ORDERS = ("first", "second", "fisher")


def _params(model, layers):
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules or not hasattr(modules[n], "weight")]
    if missing:
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
