"""Compact export: remove masked filters physically, so the structured speed-up is real.

The masked model's weights are baked into a plain model of the same architecture, then every
channel group's masked channels are removed through Torch-Pruning's dependency graph (which also
removes the matching BatchNorm channels and the consumers' input columns, across residual adds,
depthwise convs and concatenations). In eval mode the compact model computes what the masked one
computes; `check_equivalence` measures the difference.
"""
import time

import torch

from utils.masks import unmasked_state_dict
from utils.structured import alive_channels, channel_groups


def export_compact(masked_model, m_name):
    """A plain nn.Module with the masked channels removed (CPU, eval mode)."""
    from models import model_loader

    plain = model_loader(m_name)
    plain.load_state_dict({k: v.detach().cpu() for k, v in unmasked_state_dict(masked_model.state_dict()).items()})
    return _prune_plain(plain, m_name, dead_channels(masked_model, m_name))


def dead_channels(masked_model, m_name):
    """{group root: [pruned root channel indices]} of a masked model."""
    return {g.root: torch.nonzero(~alive_channels(masked_model, g)).flatten().tolist() for g in channel_groups(m_name)}


def _prune_plain(plain, m_name, dead):
    import torch_pruning as tp

    from models import model_spec

    size = model_spec(m_name).input_size
    plain.eval()
    graph = tp.DependencyGraph().build_dependency(plain, example_inputs=torch.randn(1, 3, size, size))
    modules = dict(plain.named_modules())
    for group in channel_groups(m_name):
        idx = dead.get(group.root, [])
        if idx:
            roots = [group.convs[0][1][c] for c in idx]
            graph.get_pruning_group(modules[group.root], tp.prune_conv_out_channels, idxs=roots).prune()
    return plain


def save_compact(path, compact, m_name, masked_model):
    """Write a compact model as a weights_only dict: its state_dict plus the removed channels per group."""
    from utils.checkpoints import COMPACT_FORMAT, atomic_torch_save, cpu_state_dict

    return atomic_torch_save({"format": COMPACT_FORMAT, "model": m_name, "stage": "compact",
                              "dead_channels": dead_channels(masked_model, m_name),
                              "state_dict": cpu_state_dict(compact)}, path)


def load_compact(path):
    """Rebuild a compact model saved by save_compact (prunes a fresh model the same way, loads the weights)."""
    from models import model_loader
    from utils.checkpoints import load_state_file

    ckpt = load_state_file(path)
    plain = _prune_plain(model_loader(ckpt["model"]), ckpt["model"], ckpt["dead_channels"])
    plain.load_state_dict(ckpt["state_dict"])
    return plain, ckpt


@torch.no_grad()
def check_equivalence(masked_model, compact_model, input_size, batch=8, seed=0):
    """Max |difference| of the two models' outputs on random inputs, both in eval mode on the CPU."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, input_size, input_size, generator=g)
    masked_model = masked_model.eval()
    compact_model = compact_model.eval()
    dev = next(masked_model.parameters()).device
    a = masked_model(x.to(dev)).float().cpu()
    b = compact_model(x).float()
    return float((a - b).abs().max())


@torch.no_grad()
def latency_ms(model, input_size, batch, repeats=10, warmup=3, threads=None):
    """Median wall time (ms) of one eval forward pass at a batch size on the CPU (fp32)."""
    if threads:
        torch.set_num_threads(threads)
    model = model.eval().cpu()
    x = torch.randn(batch, 3, input_size, input_size)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2]
