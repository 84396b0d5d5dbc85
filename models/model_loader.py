"""Model registry: maps model names (and a few legacy aliases) to constructors.

``model_loader`` returns a plain, freshly initialised ``nn.Module`` (PyTorch
default initialisation); no pruning reparametrisation is applied here. Besides the
project's zoo, ``torchvision.<name>`` builds any torchvision classification CNN
(``models.torchvision_zoo``); such a model takes its class count and input size from the
data set, so its spec needs the data set's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from data.specs import SPECS, canonical_dataset_name
from utils.errors import BridgeError

from .alexnet import AlexNet
from .densenet import DenseNet121
from .efficientnet import EfficientNetB0
from .googlenet import GoogLeNet
from .resnet import BasicBlock, CifarResNet, ResNet
from .shufflenetv2 import ShuffleNetV2
from .torchvision_zoo import (build_torchvision, check_input_size, close_matches, is_torchvision_name,
                              is_vision_transformer, torchvision_names)
from .vgg import VGG

__all__ = ["ModelSpec", "UnknownModelError", "MODEL_NAMES", "MODEL_HELP", "MODEL_ALIASES",
           "canonical_model_name", "model_spec", "model_loader"]

CIFAR, TINY = "cifar", "tiny_imagenet"


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about a registered model.

    ``dataset_family`` is ``"cifar"`` for 10-class 32x32 models (also used for
    the 'digits' dataset), ``"tiny_imagenet"`` for 200-class 64x64 models, and None for
    torchvision models, which fit any data set.
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
MODEL_HELP = f"model: {', '.join(MODEL_NAMES)}, or torchvision.<name> (a torchvision classification CNN)"

MODEL_ALIASES: dict[str, str] = {
    "VGGTinyImageNet": "vgg16TinyImageNet",
    "EfficientNetB0TinyImageNet": "effnetTinyImageNet",
    "ShuffleNetV2TinyImageNet": "shufflenetv2TinyImageNet",
}


def canonical_model_name(name: str) -> str:
    """Resolve an alias to its canonical name; raise ``UnknownModelError`` (with close matches) if unknown."""
    if name in _REGISTRY:
        return name
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    tv_names = torchvision_names()
    if name in tv_names:
        return name
    near = close_matches(str(name), [*MODEL_NAMES, *MODEL_ALIASES, *tv_names])
    if is_vision_transformer(name):
        raise UnknownModelError(f"{name} is a vision transformer; this project prunes and regrows CNN filters: "
                                "pick a torchvision CNN")
    if is_torchvision_name(name):
        raise UnknownModelError(f"unknown torchvision model {name!r}"
                                + (f"; close matches: {', '.join(near)}" if near else "")
                                + "; valid: torchvision.<name> for any name in torchvision.models.list_models() "
                                  "but the vision transformers")
    aliases = ", ".join(f"{a} -> {c}" for a, c in MODEL_ALIASES.items())
    raise UnknownModelError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}, torchvision.<name>; "
                            f"aliases: {aliases}" + (f"; close matches: {', '.join(near)}" if near else ""))


def model_spec(name: str, dataset: str | None = None) -> ModelSpec:
    """Return the ``ModelSpec`` of a (canonical or alias) model name; a torchvision model's class count and
    input size are those of ``dataset`` (required for it, ignored for the zoo's models)."""
    canon = canonical_model_name(name)
    if is_torchvision_name(canon):
        if dataset is None:
            raise BridgeError(f"{canon} takes its classes and input size from the data set, which is not known "
                              "here (a checkpoint written before it recorded its data set?)")
        data = SPECS[canonical_dataset_name(dataset)]
        return ModelSpec(canon, data.num_classes, data.image_size, None)
    num_classes, input_size, family = _REGISTRY[canon][1]
    return ModelSpec(canon, num_classes, input_size, family)


def model_loader(m_name: str, device: torch.device | str | None = None, dataset: str | None = None,
                 tv_weights: str | None = None, download: bool = True) -> nn.Module:
    """Build the model called ``m_name`` and move it to ``device`` if given. ``dataset`` is required for a
    torchvision model (see ``model_spec``), as are ``tv_weights`` (torchvision's pretrained weights, read
    from the torch hub cache, fetched only when ``download``)."""
    spec = model_spec(m_name, dataset)
    if is_torchvision_name(spec.name):
        model = build_torchvision(spec.name, spec.num_classes, tv_weights, download)
        check_input_size(model, spec.name, spec.input_size)
    elif tv_weights is not None:
        raise BridgeError(f"--tv_weights is for torchvision.<name> models, not {spec.name}")
    else:
        model = _REGISTRY[spec.name][0](spec.num_classes)
    if device is not None:
        model = model.to(device)
    return model
