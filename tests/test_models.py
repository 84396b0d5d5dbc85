"""Tests for the model zoo (``models``): registry, architecture sizes, names, forward/backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import (
    MODEL_NAMES,
    UnknownModelError,
    canonical_model_name,
    model_loader,
    model_spec,
)
from models.efficientnet import EfficientNetB0

# name -> (prunable layers, prunable weights). "Prunable" = every Conv2d/Linear weight.
EXPECTED_COUNTS = {
    "vgg16": (14, 14_715_584),
    "resnet20": (22, 270_896),
    "resnet32": (34, 464_432),
    "resnet44": (46, 657_968),
    "resnet56": (58, 851_504),
    "resnet18": (21, 11_164_352),
    # Published: 82 layers / 3,550,816 weights, which includes the never-used
    # expansion conv of the first block (layers.0.conv1: 32x32x1x1 = 1,024
    # weights). We do not build that conv: 3,550,816 - 1,024 = 3,549,792.
    "effnet": (81, 3_549_792),
    "densenet": (121, 6_872_768),
    "googlenet": (65, 6_142_528),
    "alexnet": (6, 2_260_672),
    "shufflenetv2": (57, 5_304_600),
    "vgg16TinyImageNet": (14, 14_812_864),
    # Published 3,611,616 minus the same unused 1,024-weight conv.
    "effnetTinyImageNet": (81, 3_610_592),
    "shufflenetv2TinyImageNet": (57, 5_693_720),
}

VGG16_PRUNABLE_NAMES = [
    "features.0", "features.3", "features.7", "features.10", "features.14",
    "features.17", "features.20", "features.24", "features.27", "features.30",
    "features.34", "features.37", "features.40", "classifier",
]

RESNET20_PRUNABLE_NAMES = [
    "conv1",
    "layer1.0.conv1", "layer1.0.conv2",
    "layer1.1.conv1", "layer1.1.conv2",
    "layer1.2.conv1", "layer1.2.conv2",
    "layer2.0.conv1", "layer2.0.conv2", "layer2.0.shortcut.0",
    "layer2.1.conv1", "layer2.1.conv2",
    "layer2.2.conv1", "layer2.2.conv2",
    "layer3.0.conv1", "layer3.0.conv2", "layer3.0.shortcut.0",
    "layer3.1.conv1", "layer3.1.conv2",
    "layer3.2.conv1", "layer3.2.conv2",
    "linear",
]


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_expected_table_covers_registry():
    assert set(EXPECTED_COUNTS) == set(MODEL_NAMES)
    assert len(MODEL_NAMES) == 14


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_prunable_counts(name):
    layers = prunable(model_loader(name))
    n_layers, n_weights = EXPECTED_COUNTS[name]
    assert len(layers) == n_layers
    assert sum(m.weight.numel() for _, m in layers) == n_weights


def test_headline_counts():
    for name, expected in [("vgg16", 14_715_584), ("resnet20", 270_896), ("resnet56", 851_504)]:
        assert sum(m.weight.numel() for _, m in prunable(model_loader(name))) == expected


def test_vgg16_prunable_names():
    assert [n for n, _ in prunable(model_loader("vgg16"))] == VGG16_PRUNABLE_NAMES
    assert [n for n, _ in prunable(model_loader("vgg16TinyImageNet"))] == VGG16_PRUNABLE_NAMES


def test_resnet20_prunable_names():
    model = model_loader("resnet20")
    assert [n for n, _ in prunable(model)] == RESNET20_PRUNABLE_NAMES
    modules = dict(model.named_modules())
    assert isinstance(modules["layer2.0.shortcut.1"], nn.BatchNorm2d)
    assert len(modules["layer1.0.shortcut"]) == 0  # identity shortcut


def test_efficientnet_first_block_has_no_expansion_conv():
    modules = dict(model_loader("effnet").named_modules())
    assert "layers.0.conv1" not in modules and "layers.0.bn1" not in modules
    assert "layers.1.conv1" in modules
    assert modules["layers.0.se.se1"].out_channels == 8  # int(32 * 0.25), from the input width


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_shape_and_no_unused_params(name):
    torch.manual_seed(0)
    spec = model_spec(name)
    model = model_loader(name).train()
    x = torch.randn(2, 3, spec.input_size, spec.input_size)
    out = model(x)
    assert out.shape == (2, spec.num_classes)
    out.sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize("name", ["resnet20", "alexnet"])
def test_eval_forward_shape(name):
    spec = model_spec(name)
    model = model_loader(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, spec.input_size, spec.input_size))
    assert out.shape == (2, spec.num_classes)


def test_efficientnet_drop_connect():
    torch.manual_seed(0)
    model = EfficientNetB0(num_classes=10, drop_connect_rate=0.2)
    rates = [b.drop_rate for b in model.layers]
    assert rates[0] == 0.0 and rates[-1] > 0.0 and rates == sorted(rates)
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(b.drop_rate == 0.0 for b in model_loader("effnet").layers)


def test_model_loader_device_and_plain_modules():
    model = model_loader("resnet20", device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not any("mask" in n or n.endswith("_orig") for n in names)


@pytest.mark.parametrize("alias, canonical", [
    ("VGGTinyImageNet", "vgg16TinyImageNet"),
    ("EfficientNetB0TinyImageNet", "effnetTinyImageNet"),
    ("ShuffleNetV2TinyImageNet", "shufflenetv2TinyImageNet"),
])
def test_aliases(alias, canonical):
    assert canonical_model_name(alias) == canonical
    assert model_spec(alias).name == canonical
    assert alias not in MODEL_NAMES and canonical in MODEL_NAMES


def test_canonical_names_resolve_to_themselves():
    for name in MODEL_NAMES:
        assert canonical_model_name(name) == name


def test_unknown_model():
    with pytest.raises(UnknownModelError) as exc:
        model_loader("foo")
    msg = str(exc.value)
    assert "'foo'" in msg
    for valid in ("vgg16", "resnet20", "resnet56", "effnet", "shufflenetv2TinyImageNet",
                  "VGGTinyImageNet"):
        assert valid in msg
    assert isinstance(exc.value, ValueError)
    with pytest.raises(UnknownModelError):
        model_spec("resnet")
    with pytest.raises(UnknownModelError):
        canonical_model_name("VGG16")


@pytest.mark.parametrize("name, num_classes, input_size, family", [
    ("vgg16", 10, 32, "cifar"),
    ("resnet20", 10, 32, "cifar"),
    ("shufflenetv2", 10, 32, "cifar"),
    ("vgg16TinyImageNet", 200, 64, "tiny_imagenet"),
    ("effnetTinyImageNet", 200, 64, "tiny_imagenet"),
    ("ShuffleNetV2TinyImageNet", 200, 64, "tiny_imagenet"),
])
def test_model_spec(name, num_classes, input_size, family):
    spec = model_spec(name)
    assert (spec.num_classes, spec.input_size, spec.dataset_family) == (num_classes, input_size, family)
    with pytest.raises(Exception):
        spec.num_classes = 3  # frozen
