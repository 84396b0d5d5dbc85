"""GoogLeNet (Inception v1) adapted to 32x32 inputs.

The ImageNet stem is replaced by one 3x3 conv to 192 channels; every conv in
the Inception branches is followed by BatchNorm and ReLU. The 5x5 branch is
factorised into two 3x3 convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Inception", "GoogLeNet"]


def _conv_bn_relu(in_ch: int, out_ch: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, k, padding=k // 2),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True)]


class Inception(nn.Module):
    """Four parallel branches (1x1 | 1x1-3x3 | 1x1-3x3-3x3 | maxpool-1x1), concatenated."""

    def __init__(self, in_planes: int, n1x1: int, n3x3red: int, n3x3: int,
                 n5x5red: int, n5x5: int, pool_planes: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(in_planes, n1x1, 1))
        self.b2 = nn.Sequential(*_conv_bn_relu(in_planes, n3x3red, 1),
                                *_conv_bn_relu(n3x3red, n3x3, 3))
        self.b3 = nn.Sequential(*_conv_bn_relu(in_planes, n5x5red, 1),
                                *_conv_bn_relu(n5x5red, n5x5, 3),
                                *_conv_bn_relu(n5x5, n5x5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                *_conv_bn_relu(in_planes, pool_planes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class GoogLeNet(nn.Module):
    """CIFAR GoogLeNet: pre-layers, inception a3-b3, pool, a4-e4, pool, a5-b5, linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.pre_layers = nn.Sequential(*_conv_bn_relu(3, 192, 3))
        self.a3 = Inception(192, 64, 96, 128, 16, 32, 32)
        self.b3 = Inception(256, 128, 128, 192, 32, 96, 64)
        self.a4 = Inception(480, 192, 96, 208, 16, 48, 64)
        self.b4 = Inception(512, 160, 112, 224, 24, 64, 64)
        self.c4 = Inception(512, 128, 128, 256, 24, 64, 64)
        self.d4 = Inception(512, 112, 144, 288, 32, 64, 64)
        self.e4 = Inception(528, 256, 160, 320, 32, 128, 128)
        self.a5 = Inception(832, 256, 160, 320, 32, 128, 128)
        self.b5 = Inception(832, 384, 192, 384, 48, 128, 128)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pre_layers(x)
        out = self.b3(self.a3(out))
        out = F.max_pool2d(out, 3, stride=2, padding=1)
        out = self.e4(self.d4(self.c4(self.b4(self.a4(out)))))
        out = F.max_pool2d(out, 3, stride=2, padding=1)
        out = self.b5(self.a5(out))
        # Global average pool (an 8x8 window at the native 32x32 input).
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
