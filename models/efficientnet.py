"""EfficientNet-B0 for small images (CIFAR-10 and Tiny-ImageNet).

This is the compact CIFAR variant commonly used in pruning papers: a 3x3
stride-1 stem, seven MBConv stages and a linear classifier directly on the
320-channel features (no 1280-channel head conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetB0", "Block", "SE", "B0_CFG", "swish", "drop_connect"]

B0_CFG = {
    "num_blocks": [1, 2, 2, 3, 3, 4, 1],
    "expansion": [1, 6, 6, 6, 6, 6, 6],
    "out_channels": [16, 24, 40, 80, 112, 192, 320],
    "kernel_size": [3, 3, 5, 3, 5, 5, 3],
    "stride": [1, 2, 2, 2, 1, 2, 1],
    "dropout_rate": 0.2,
}


def swish(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU activation, ``x * sigmoid(x)``."""
    return x * torch.sigmoid(x)


def drop_connect(x: torch.Tensor, drop_rate: float) -> torch.Tensor:
    """Per-sample stochastic depth: zero whole samples, rescale the rest."""
    keep = 1.0 - drop_rate
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class SE(nn.Module):
    """Squeeze-and-excitation: global pool -> 1x1 conv -> swish -> 1x1 conv -> sigmoid gate."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.se1 = nn.Conv2d(channels, se_channels, kernel_size=1, bias=True)
        self.se2 = nn.Conv2d(se_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.se2(swish(self.se1(w))))
        return x * w


class Block(nn.Module):
    """MBConv block: [1x1 expand] -> depthwise kxk -> SE -> 1x1 project (+ skip).

    The expansion conv ``conv1``/``bn1`` only exists when ``expand_ratio != 1``.
    (The published model creates it unconditionally but never calls it in the
    first block; we do not hold unused parameters, so that block has no conv1.)
    ``se_channels`` is derived from the block's *input* width, as published.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int, expand_ratio: int = 1, se_ratio: float = 0.25,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.expand_ratio = expand_ratio
        self.drop_rate = drop_rate
        channels = expand_ratio * in_channels
        if expand_ratio != 1:
            self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, stride=stride,
                               padding=(kernel_size - 1) // 2, groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SE(channels, int(in_channels * se_ratio))
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand_ratio == 1 else swish(self.bn1(self.conv1(x)))
        out = swish(self.bn2(self.conv2(out)))
        out = self.se(out)
        out = self.bn3(self.conv3(out))
        if self.has_skip:
            if self.training and self.drop_rate > 0:
                out = drop_connect(out, self.drop_rate)
            out = out + x
        return out


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 (small-image variant).

    ``drop_connect_rate`` defaults to 0.0: the published implementation scales
    its drop-connect rate by a block counter that is never incremented, so it
    is effectively always zero. A positive value enables standard stochastic
    depth with rate ``drop_connect_rate * block_index / num_blocks``.

    The same stride-1 stem is used for Tiny-ImageNet (64x64 -> 4x4 final map);
    we found no evidence that the published Tiny variant changes the stem, so
    only ``num_classes`` differs.
    """

    def __init__(self, num_classes: int = 10, drop_connect_rate: float = 0.0,
                 cfg: dict | None = None) -> None:
        super().__init__()
        self.cfg = dict(B0_CFG if cfg is None else cfg)
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.layers = self._make_layers(32, drop_connect_rate)
        self.linear = nn.Linear(self.cfg["out_channels"][-1], num_classes)

    def _make_layers(self, in_channels: int, drop_connect_rate: float) -> nn.Sequential:
        c = self.cfg
        total = sum(c["num_blocks"])
        layers, b = [], 0
        for expansion, out_ch, n, k, stride in zip(c["expansion"], c["out_channels"],
                                                   c["num_blocks"], c["kernel_size"],
                                                   c["stride"]):
            for s in [stride] + [1] * (n - 1):
                layers.append(Block(in_channels, out_ch, k, s, expansion, se_ratio=0.25,
                                    drop_rate=drop_connect_rate * b / total))
                in_channels = out_ch
                b += 1
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = swish(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        out = F.dropout(out, p=self.cfg["dropout_rate"], training=self.training)
        return self.linear(out)
