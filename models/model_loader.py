"""Model registry: maps model names (and a few legacy aliases) to constructors.

``model_loader`` returns a plain, freshly initialised ``nn.Module`` (PyTorch
default initialisation); no pruning reparametrisation is applied here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from utils.errors import BridgeError

from .alexnet import AlexNet
from .densenet import DenseNet121
from .efficientnet import EfficientNetB0
from .googlenet import GoogLeNet
from .resnet import BasicBlock, CifarResNet, ResNet
from .shufflenetv2 import ShuffleNetV2
from .vgg import VGG

__all__ = ["ModelSpec", "UnknownModelError", "MODEL_NAMES", "MODEL_ALIASES",
           "canonical_model_name", "model_spec", "model_loader"]

CIFAR, TINY = "cifar", "tiny_imagenet"


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about a registered model.

    ``dataset_family`` is ``"cifar"`` for 10-class 32x32 models (also used for
    the 'digits' dataset) and ``"tiny_imagenet"`` for 200-class 64x64 models.
    """

    name: str
    num_classes: int
    input_size: int
    dataset_family: str


class UnknownModelError(BridgeError, ValueError):
    """Raised for a model name that is neither canonical nor an alias."""


_CIFAR_SPEC = (10, 32, CIFAR)
_TINY_SPEC = (200, 64, TINY)

# canonical name -> (constructor taking num_classes, (num_classes, input_size, family))
_REGISTRY: dict[str, tuple[Callable[[int], nn.Module], tuple[int, int, str]]] = {
    "vgg16": (lambda nc: VGG("VGG16", num_classes=nc), _CIFAR_SPEC),
    "resnet20": (lambda nc: CifarResNet(BasicBlock, 3, num_classes=nc), _CIFAR_SPEC),
    "resnet32": (lambda nc: CifarResNet(BasicBlock, 5, num_classes=nc), _CIFAR_SPEC),
    "resnet44": (lambda nc: CifarResNet(BasicBlock, 7, num_classes=nc), _CIFAR_SPEC),
    "resnet56": (lambda nc: CifarResNet(BasicBlock, 9, num_classes=nc), _CIFAR_SPEC),
    "resnet18": (lambda nc: ResNet(BasicBlock, [2, 2, 2, 2], num_classes=nc), _CIFAR_SPEC),
    "effnet": (lambda nc: EfficientNetB0(num_classes=nc), _CIFAR_SPEC),
    "densenet": (lambda nc: DenseNet121(num_classes=nc), _CIFAR_SPEC),
    "googlenet": (lambda nc: GoogLeNet(num_classes=nc), _CIFAR_SPEC),
    "alexnet": (lambda nc: AlexNet(num_classes=nc), _CIFAR_SPEC),
    "shufflenetv2": (lambda nc: ShuffleNetV2(net_size=2, num_classes=nc), _CIFAR_SPEC),
    "vgg16TinyImageNet": (lambda nc: VGG("VGG16", num_classes=nc, global_pool=True),
                          _TINY_SPEC),
    "effnetTinyImageNet": (lambda nc: EfficientNetB0(num_classes=nc), _TINY_SPEC),
    "shufflenetv2TinyImageNet": (lambda nc: ShuffleNetV2(net_size=2, num_classes=nc,
                                                         stem_pool=True), _TINY_SPEC),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

MODEL_ALIASES: dict[str, str] = {
    "VGGTinyImageNet": "vgg16TinyImageNet",
    "EfficientNetB0TinyImageNet": "effnetTinyImageNet",
    "ShuffleNetV2TinyImageNet": "shufflenetv2TinyImageNet",
}


def canonical_model_name(name: str) -> str:
    """Resolve an alias to its canonical name; raise ``UnknownModelError`` if unknown."""
    if name in _REGISTRY:
        return name
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    aliases = ", ".join(f"{a} -> {c}" for a, c in MODEL_ALIASES.items())
    raise UnknownModelError(
        f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}; aliases: {aliases}")


def model_spec(name: str) -> ModelSpec:
    """Return the ``ModelSpec`` of a (canonical or alias) model name."""
    canon = canonical_model_name(name)
    num_classes, input_size, family = _REGISTRY[canon][1]
    return ModelSpec(canon, num_classes, input_size, family)


def model_loader(m_name: str, device: torch.device | str | None = None) -> nn.Module:
    """Build the model called ``m_name`` and move it to ``device`` if given."""
    canon = canonical_model_name(m_name)
    builder, (num_classes, _, _) = _REGISTRY[canon]
    model = builder(num_classes)
    if device is not None:
        model = model.to(device)
    return model
