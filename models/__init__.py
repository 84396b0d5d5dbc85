"""Model zoo: CIFAR-10 (32x32) and Tiny-ImageNet (64x64) CNNs used by BRIDGE."""

from .model_loader import (
    MODEL_ALIASES,
    MODEL_HELP,
    MODEL_NAMES,
    ModelSpec,
    UnknownModelError,
    canonical_model_name,
    model_loader,
    model_spec,
)

__all__ = [
    "MODEL_ALIASES",
    "MODEL_HELP",
    "MODEL_NAMES",
    "ModelSpec",
    "UnknownModelError",
    "canonical_model_name",
    "model_loader",
    "model_spec",
]
