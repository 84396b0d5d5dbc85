"""VGG networks for CIFAR-10 (32x32) and Tiny-ImageNet (64x64).

Module names are part of the repository's contract: masks, SSIM and saliency
scores are keyed by ``named_modules()`` names (``features.0`` ... ``features.40``
for the convolutions and ``classifier`` for the final linear layer of VGG16).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG", "VGG_CFGS"]

# Integers are conv output widths, "M" is a 2x2 max-pool.
VGG_CFGS: dict[str, list[int | str]] = {
    "VGG16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with BatchNorm and a single linear classifier (CIFAR-style).

    Each conv is ``Conv2d(3x3, pad 1, bias) -> BatchNorm2d -> ReLU``. The
    ``features`` stack ends with a pooling layer: on CIFAR the spatial size is
    already 1x1 after five max-pools, so the published model uses an identity
    ``AvgPool2d(kernel_size=1, stride=1)``; the Tiny-ImageNet variant
    (``global_pool=True``) leaves a 2x2 map and uses ``AdaptiveAvgPool2d(1)``.
    """

    def __init__(self, cfg: str = "VGG16", num_classes: int = 10,
                 global_pool: bool = False) -> None:
        super().__init__()
        self.features = self._make_features(VGG_CFGS[cfg], global_pool)
        self.classifier = nn.Linear(512, num_classes)

    @staticmethod
    def _make_features(cfg: list[int | str], global_pool: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1, bias=True),
                           nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                in_ch = v
        layers.append(nn.AdaptiveAvgPool2d(1) if global_pool
                      else nn.AvgPool2d(kernel_size=1, stride=1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        return self.classifier(torch.flatten(out, 1))
