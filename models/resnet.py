"""Residual networks for 32x32 inputs.

* ``CifarResNet`` -- the 3-stage (16/32/64 channel) ResNet-6n+2 family of
  He et al. (resnet20/32/44/56), with 1x1 projection shortcuts ("option B").
* ``ResNet`` -- the 4-stage (64..512 channel) ResNet-18 with a CIFAR stem
  (3x3 stride-1 first conv, no max-pool).

Both share ``BasicBlock``; names such as ``layer2.0.shortcut.0`` are relied on
by the pruning code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "ResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection.

    ``shortcut`` is an empty ``nn.Sequential`` (identity) unless the block
    changes resolution or width, in which case it is ``1x1 conv -> BN``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _make_stage(block: type[BasicBlock], in_planes: int, planes: int,
                num_blocks: int, stride: int) -> nn.Sequential:
    """Stack ``num_blocks`` blocks; only the first one uses ``stride``."""
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
        layers.append(block(in_planes, planes, s))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: three stages of ``n`` blocks, widths 16/32/64."""

    def __init__(self, block: type[BasicBlock], n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _make_stage(block, 16, 16, n, stride=1)
        self.layer2 = _make_stage(block, 16, 32, n, stride=2)
        self.layer3 = _make_stage(block, 32, 64, n, stride=2)
        self.linear = nn.Linear(64 * block.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pool (an 8x8 window at the native 32x32 input).
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class ResNet(nn.Module):
    """ImageNet-style 4-stage ResNet with a CIFAR stem (no stride, no max-pool)."""

    def __init__(self, block: type[BasicBlock], num_blocks: list[int],
                 num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        in_planes = 64
        for i, (w, s, n) in enumerate(zip(widths, strides, num_blocks), start=1):
            self.add_module(f"layer{i}", _make_stage(block, in_planes, w, n, s))
            in_planes = w * block.expansion
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pool (a 4x4 window at the native 32x32 input).
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
