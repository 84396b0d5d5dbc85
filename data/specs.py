"""The data sets this project knows: their shapes, classes and published augmentation / normalisation."""
from dataclasses import dataclass

from utils.errors import UnknownChoiceError

DATASETS = ("CIFAR10", "tiny_imagenet", "digits")
_DATASET_ALIASES = {"cifar10": "CIFAR10", "cifar-10": "CIFAR10", "tiny_imagenet": "tiny_imagenet",
                    "tiny-imagenet": "tiny_imagenet", "tinyimagenet": "tiny_imagenet", "digits": "digits"}
BACKENDS = ("auto", "tensor", "loader")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class DatasetSpec:
    """Shape, classes and the published augmentation / normalisation of one data set."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    crop_padding: int
    flip: bool
    color_jitter: tuple = None  # (brightness, contrast, saturation, hue) or None

    @property
    def model_family(self):
        """Which model family (models.model_spec(...).dataset_family) fits this data."""
        return "tiny_imagenet" if self.name == "tiny_imagenet" else "cifar"


SPECS = {
    "CIFAR10": DatasetSpec("CIFAR10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 4, True),
    "digits": DatasetSpec("digits", 10, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 4, False),
    "tiny_imagenet": DatasetSpec("tiny_imagenet", 200, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 8, True,
                                 (0.2, 0.2, 0.2, 0.1)),
}


def canonical_dataset_name(name):
    key = _DATASET_ALIASES.get(str(name).lower()) if name is not None else None
    if key is None:
        raise UnknownChoiceError("dataset", name, DATASETS)
    return key
