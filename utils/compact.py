"""Compact export: remove masked filters physically, so the structured speed-up is real.

The masked model's weights are baked into a plain model of the same architecture, then every
channel group's masked channels are removed through Torch-Pruning's dependency graph (which also
removes the matching BatchNorm channels and the consumers' input columns, across residual adds,
depthwise convs and concatenations). In eval mode the compact model computes what the masked one
computes; `check_equivalence` measures the difference.
"""
from dataclasses import dataclass

import torch
import torch_pruning as tp

from models import model_loader, model_spec
from utils.masks import plain_copy
from utils.structured import alive_channels, channel_groups


def export_compact(masked_model, input_size):
    """A plain nn.Module with the masked channels removed (CPU, eval mode); `input_size`: the square input the
    dependency graph is traced with."""
    return _prune_plain(plain_copy(masked_model), input_size, dead_channels(masked_model, input_size))


def dead_channels(masked_model, input_size):
    """{group root: [pruned root channel indices]} of a masked model."""
    return {g.root: torch.nonzero(~alive_channels(masked_model, g)).flatten().tolist()
            for g in channel_groups(masked_model, input_size)}


def _prune_plain(plain, input_size, dead):
    """Remove the `dead` channels of every group from the plain (unmasked) model, in place."""
    plain.eval()
    groups = channel_groups(plain, input_size)  # before any cut: the full architecture's groups
    graph = tp.DependencyGraph().build_dependency(plain, example_inputs=torch.randn(1, 3, input_size, input_size))
    modules = dict(plain.named_modules())
    for group in groups:
        idx = dead.get(group.root, [])
        if idx:
            roots = [group.convs[0][1][c] for c in idx]
            graph.get_pruning_group(modules[group.root], tp.prune_conv_out_channels, idxs=roots).prune()
    return plain


def save_compact(path, compact, m_name, masked_model, input_size, dataset=None):
    """Write a compact model as a weights_only dict: its state_dict plus the removed channels per group (and the
    data set, which a torchvision model's class count comes from)."""
    from utils.checkpoints import COMPACT_FORMAT, atomic_torch_save, cpu_state_dict

    return atomic_torch_save({"format": COMPACT_FORMAT, "model": m_name, "stage": "compact", "input_size": input_size,
                              "dataset": dataset,
                              "dead_channels": dead_channels(masked_model, input_size),
                              "state_dict": cpu_state_dict(compact)}, path)


def load_compact(path):
    """Rebuild a compact model saved by save_compact (prunes a fresh model the same way, loads the weights)."""
    from utils.checkpoints import load_state_file

    ckpt = load_state_file(path)
    dataset = ckpt.get("dataset")
    size = ckpt.get("input_size") or model_spec(ckpt["model"], dataset).input_size  # files written before input_size
    plain = _prune_plain(model_loader(ckpt["model"], dataset=dataset), size, ckpt["dead_channels"])
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


@dataclass(frozen=True)
class Latency:
    """A measured forward latency: the median and interquartile range of torch.utils.benchmark's blocks."""

    median_ms: float
    iqr_ms: float
    threads: int
    blocks: int

    def __str__(self):
        return f"{self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f}, {self.threads} threads)"


def time_callable(fn, threads=None, min_run_time=0.3):
    """Latency of calling `fn()` (torch.utils.benchmark.Timer.blocked_autorange: warm-up, then blocks of runs
    for at least `min_run_time` seconds)."""
    from torch.utils import benchmark  # imported on use: only latency measurements need it

    threads = threads or torch.get_num_threads()
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time)
    return Latency(1000 * m.median, 1000 * m.iqr, threads, len(m.times))


def torch_latency(model, input_size, batch, threads=None, min_run_time=0.3):
    """Latency of one eval forward pass of `model` at a batch size on the CPU in fp32 (PyTorch eager)."""
    model = model.eval().cpu()
    x = torch.randn(batch, 3, input_size, input_size)

    def forward():
        with torch.no_grad():
            return model(x)

    return time_callable(forward, threads, min_run_time)
