"""Data sets and loaders: CIFAR-10, Tiny-ImageNet and scikit-learn's digits.

`data_loader(...)` returns a `DataBundle` of train / val / test loaders (it also unpacks as the
published 3-tuple). What differs from the published loader, and why:

* the validation split is held out of the training images with a fixed seed (`split_seed`,
  independent of the run's seed, so every stage sees the same split) and uses the *test*
  transforms; model selection is done on it, never on the test set;
* `batch_size` and `num_workers` are honoured;
* CIFAR-size data (CIFAR-10, digits) is decoded once and held as a uint8 tensor (on the GPU when
  there is one) and augmented with batched tensor ops (`backend="tensor"`), which removes the
  per-image Python work of a torchvision-transform DataLoader; `backend="loader"` keeps that
  classic path (it is what Tiny-ImageNet uses);
* Tiny-ImageNet's `val/val_annotations.txt` is read in place: the user's folder is never modified.

Augmentation and normalisation are the published ones: CIFAR RandomCrop(32, pad 4) with zero
padding + horizontal flip, mean (0.4914, 0.4822, 0.4465) / std (0.2023, 0.1994, 0.2010); Tiny-ImageNet
RandomCrop(64, pad 8) + flip + ColorJitter(0.2, 0.2, 0.2, 0.1), ImageNet mean/std. Digits (8x8
greyscale, upscaled to 32x32x3) gets the CIFAR normalisation and random crop, but no flip
(a mirrored digit is a different glyph).
"""
from dataclasses import dataclass

import torch

from data.readers import load_cifar10_arrays, load_digits_arrays, split_indices, tiny_imagenet_files
from data.specs import BACKENDS, SPECS, DatasetSpec, canonical_dataset_name
from data.tensor_loader import TensorLoader
from data.torch_loader import EpochShuffleSampler, TransformDataset, make_loader, torchvision_transforms
from utils.errors import UnknownChoiceError


def set_shuffle_seed(loader, seed):
    """Make a training loader's shuffle and augmentation depend on `seed` (both backends)."""
    target = getattr(loader, "sampler", None) if not isinstance(loader, TensorLoader) else loader
    if target is not None and hasattr(target, "seed"):
        target.seed = int(seed)


@dataclass
class DataBundle:
    """Train / val / test loaders plus what describes them; unpacks as (train, val, test)."""

    train: object
    val: object
    test: object
    spec: DatasetSpec
    backend: str
    sizes: dict

    def __iter__(self):
        return iter((self.train, self.val, self.test))

    def subset(self, split, n, seed=0):
        """A loader over a fixed random subset of n images of a split (same transforms and batch size)."""
        loader = getattr(self, split)
        total = len(loader.dataset)
        if n is None or n >= total:
            return loader
        keep = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
        if isinstance(loader, TensorLoader):
            return TensorLoader(loader.images[keep.to(loader.device)], loader.labels[keep.to(loader.device)],
                                loader.spec, loader.batch_size, loader.shuffle, loader.augment, loader.seed,
                                loader.device, loader.drop_last)
        ds = torch.utils.data.Subset(loader.dataset, keep.tolist())
        sampler = EpochShuffleSampler(len(ds), getattr(loader.sampler, "seed", seed)) if split == "train" else None
        return make_loader(ds, sampler, batch_size=loader.batch_size, num_workers=loader.num_workers,
                           pin_memory=loader.pin_memory, persistent_workers=loader.num_workers > 0)

    def describe(self):
        s = self.sizes
        return (f"{self.spec.name}: {s['train']} train / {s['val']} val / {s['test']} test images, "
                f"{self.spec.num_classes} classes, {self.spec.image_size}px, backend={self.backend}")


def _subset(idx, limit, seed):
    if limit is None or limit >= len(idx):
        return idx
    keep = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:limit]
    return idx[keep.sort().values]


def data_loader(data_dir="./data", val_split=0.1, batch_size=128, num_workers=2, dataset="CIFAR10",
                device="cpu", seed=42, backend="auto", eval_batch_size=None, download=True, split_seed=42,
                train_limit=None, test_limit=None):
    """Build the train / val / test loaders of a data set (see the module docstring).

    train_limit / test_limit keep a fixed random subset of the train / test images (quick runs, tests).
    """
    name = canonical_dataset_name(dataset)
    spec = SPECS[name]
    if backend not in BACKENDS:
        raise UnknownChoiceError("data backend", backend, BACKENDS)
    if backend == "auto":
        backend = "loader" if name == "tiny_imagenet" else "tensor"
    if backend == "tensor" and name == "tiny_imagenet":
        raise UnknownChoiceError("data backend for tiny_imagenet (ColorJitter needs the per-image path)",
                                 backend, ("loader",))
    eval_batch_size = int(eval_batch_size or max(batch_size, 256))
    if batch_size < 1 or eval_batch_size < 1:
        raise ValueError("batch sizes must be positive")

    if name == "tiny_imagenet":
        train_x, train_y, test_x, test_y = tiny_imagenet_files(data_dir)
    elif name == "digits":
        train_x, train_y, test_x, test_y = load_digits_arrays()
    else:
        train_x, train_y, test_x, test_y = load_cifar10_arrays(data_dir, download=download)

    tr_idx, va_idx = split_indices(len(train_y), val_split, split_seed)
    tr_idx = _subset(tr_idx, train_limit, split_seed + 1)
    te_idx = _subset(torch.arange(len(test_y)), test_limit, split_seed + 2)

    def take(x, idx):
        return [x[i] for i in idx.tolist()] if isinstance(x, list) else x[idx]

    parts = {"train": (take(train_x, tr_idx), train_y[tr_idx]), "val": (take(train_x, va_idx), train_y[va_idx]),
             "test": (take(test_x, te_idx), test_y[te_idx])}
    sizes = {k: len(v[1]) for k, v in parts.items()}

    if backend == "tensor":
        loaders = {
            k: TensorLoader(x, y, spec, batch_size if k == "train" else eval_batch_size, shuffle=(k == "train"),
                            augment=(k == "train"), seed=seed, device=device)
            for k, (x, y) in parts.items()
        }
    else:
        pin = torch.device(device).type == "cuda"
        loaders = {}
        for k, (x, y) in parts.items():
            tf = torchvision_transforms(spec, train=(k == "train"))
            ds = TransformDataset(x, y, tf)
            sampler = EpochShuffleSampler(len(ds), seed) if k == "train" else None
            loaders[k] = make_loader(ds, sampler, batch_size=batch_size if k == "train" else eval_batch_size,
                                     num_workers=num_workers, pin_memory=pin, persistent_workers=num_workers > 0)
    return DataBundle(loaders["train"], loaders["val"], loaders["test"], spec, backend, sizes)
