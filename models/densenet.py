"""DenseNet-121 (CIFAR variant: 3x3 stem, no initial max-pool)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Bottleneck", "Transition", "DenseNet", "DenseNet121"]


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1(4g) -> BN-ReLU-3x3(g), concatenated to the input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], dim=1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (channel compression) followed by 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC with four dense blocks (``dense1..4``) and three transitions."""

    def __init__(self, nblocks: list[int], growth_rate: int = 32,
                 reduction: float = 0.5, num_classes: int = 10) -> None:
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        for i, n in enumerate(nblocks, start=1):
            self.add_module(f"dense{i}", self._make_dense(planes, growth_rate, n))
            planes += n * growth_rate
            if i < len(nblocks):
                out_planes = int(math.floor(planes * reduction))
                self.add_module(f"trans{i}", Transition(planes, out_planes))
                planes = out_planes
        self.num_stages = len(nblocks)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    @staticmethod
    def _make_dense(in_planes: int, growth_rate: int, n: int) -> nn.Sequential:
        return nn.Sequential(*[Bottleneck(in_planes + i * growth_rate, growth_rate)
                               for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(1, self.num_stages + 1):
            out = getattr(self, f"dense{i}")(out)
            if i < self.num_stages:
                out = getattr(self, f"trans{i}")(out)
        out = F.relu(self.bn(out))
        # Global average pool (a 4x4 window at the native 32x32 input).
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def DenseNet121(num_classes: int = 10) -> DenseNet:
    """DenseNet-121: growth 32, blocks [6, 12, 24, 16], compression 0.5."""
    return DenseNet([6, 12, 24, 16], growth_rate=32, reduction=0.5, num_classes=num_classes)
