"""What a regrowth run writes besides its logs: checkpoints with their training FLOPs, search plots."""
import os

from utils.checkpoints import save_checkpoint
from utils.plots import plot_allocation, plot_search_curves


def save_model(path, model, setup, stage, metrics, kind, **extra):
    """A checkpoint of `model` with the run's training FLOPs so far (utils.compute)."""
    if setup.compute is not None:
        extra.setdefault("training_flops", setup.compute.record())
    return save_checkpoint(path, model, setup.hp.source.m_name, setup.data.spec.name, stage, setup.record, metrics,
                           sparsity=kind.sparsity(model), **extra)


def write_search_outputs(out_dir, rows, space, best_alloc, title):
    """Reward/entropy curves and the best allocation per unit as PNGs."""
    curves = plot_search_curves(rows, os.path.join(out_dir, "search_curves.png"), title)
    alloc = plot_allocation(space.names, best_alloc, space.capacities, space.ssim,
                            os.path.join(out_dir, "allocation.png"), title)
    return curves, alloc
