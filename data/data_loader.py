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
import os
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import DataNotFoundError, UnknownChoiceError

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


# ----------------------------------------------------------------------------------------------
# Raw arrays: every data set becomes uint8 images (N, 3, H, W) + int64 labels, or lists of files
# ----------------------------------------------------------------------------------------------

def _decode_images(paths):
    """Decode image files to a uint8 (N, 3, H, W) tensor; JPEGs go through torchvision's batched decoder."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

    jpeg = [p for p in paths if p.lower().endswith((".jpg", ".jpeg"))]
    if len(jpeg) == len(paths):
        out = decode_jpeg([read_file(p) for p in paths], mode=ImageReadMode.RGB)
    else:
        out = [decode_image(read_file(p), mode=ImageReadMode.RGB) for p in paths]
    return torch.stack(out) if len(out) else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)


def decoded_images(paths):
    """_decode_images with an on-disk cache: decoding CIFAR-10's 60,000 JPEGs costs ~11 s per process on
    2 cores, loading the decoded uint8 tensor back ~0.3 s. The key covers every file's path, size and mtime,
    so a changed file re-decodes; the user's folder is only read."""
    from utils.cache import DiskCache, cache_key, default_cache_dir

    stats = [(p, st.st_size, st.st_mtime_ns) for p, st in ((p, os.stat(p)) for p in paths)]
    key = cache_key("decoded-images", files=stats)
    return DiskCache(default_cache_dir() or None).get_or_compute(
        key, lambda: _decode_images(paths), what=f"{len(paths):,} decoded images")


def _image_folder(root):
    """(paths, labels, classes) of an ImageFolder-style tree root/<class>/<image>, classes sorted."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for idx, cls in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, cls)) if f.lower().endswith(IMAGE_EXTENSIONS))
        paths += [os.path.join(root, cls, f) for f in files]
        labels += [idx] * len(files)
    return paths, torch.tensor(labels, dtype=torch.int64), classes


def _cifar10_missing_message(data_dir):
    return (f"CIFAR-10 not found under {data_dir!r}: put the image-folder copy at "
            f"{os.path.join(data_dir, 'cifar10')}/{{train,test}}/<class>/*.jpg "
            f"(e.g. mkdir -p {data_dir} && tar xzf cifar10-jpeg.tar.gz -C {data_dir}), "
            f"or torchvision's files at {os.path.join(data_dir, 'cifar-10-batches-py')}, "
            "or run once online to download them")


def load_cifar10_arrays(data_dir, download=True):
    """CIFAR-10 as uint8 tensors, from an image-folder copy or torchvision's files (downloaded if allowed)."""
    folder = os.path.join(data_dir, "cifar10")
    if os.path.isdir(os.path.join(folder, "train")) and os.path.isdir(os.path.join(folder, "test")):
        splits = []
        for split in ("train", "test"):
            paths, labels, classes = _image_folder(os.path.join(folder, split))
            if classes != list(CIFAR10_CLASSES):
                raise DataNotFoundError(f"{os.path.join(folder, split)} should hold the ten CIFAR-10 class folders "
                                        f"{', '.join(CIFAR10_CLASSES)}; found {classes}")
            splits += [decoded_images(paths), labels]
        return tuple(splits)

    from torchvision.datasets import CIFAR10

    have_files = os.path.isdir(os.path.join(data_dir, "cifar-10-batches-py"))
    if not have_files and not download:
        raise DataNotFoundError(_cifar10_missing_message(data_dir))
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an offline machine must fail fast, not hang on the download
    try:
        train = CIFAR10(root=data_dir, train=True, download=not have_files)
        test = CIFAR10(root=data_dir, train=False, download=False)
    except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError, ... offline
        raise DataNotFoundError(_cifar10_missing_message(data_dir) + f" ({type(exc).__name__})") from None
    finally:
        socket.setdefaulttimeout(old_timeout)

    def to_tensor(ds):
        return (torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))),
                torch.tensor(ds.targets, dtype=torch.int64))

    return (*to_tensor(train), *to_tensor(test))


def load_digits_arrays(test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 digits (1,797 real images), upscaled to 32x32x3 uint8.

    scikit-learn has no official test split: a fixed permutation (seed 0) puts 20% aside.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(digits.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def tiny_imagenet_files(data_dir):
    """(train_paths, train_labels, test_paths, test_labels) of tiny-imagenet-200, read without moving files.

    The official val split (10k images) serves as the test set, as in the published loader. Both the
    original layout (val/images/*.JPEG + val_annotations.txt) and the one the published loader leaves
    behind (val/images/<wnid>/*.JPEG) are understood.
    """
    root = os.path.join(data_dir, "tiny-imagenet-200")
    train_root, val_root = os.path.join(root, "train"), os.path.join(root, "val")
    if not (os.path.isdir(train_root) and os.path.isdir(val_root)):
        raise DataNotFoundError(
            f"Tiny-ImageNet not found: expected {root}/{{train,val}} (the standard tiny-imagenet-200 layout; "
            "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into --data_dir)")
    wnids = sorted(d for d in os.listdir(train_root) if os.path.isdir(os.path.join(train_root, d)))
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        img_dir = os.path.join(train_root, w, "images")
        img_dir = img_dir if os.path.isdir(img_dir) else os.path.join(train_root, w)
        files = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        train_paths += [os.path.join(img_dir, f) for f in files]
        train_labels += [index[w]] * len(files)

    test_paths, test_labels = [], []
    annotations = os.path.join(val_root, "val_annotations.txt")
    images = os.path.join(val_root, "images")
    flat = os.path.isdir(images) and any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(images))
    if os.path.isfile(annotations) and flat:
        with open(annotations) as fh:
            for line in fh:
                parts = line.strip().split("\t")
                if len(parts) >= 2 and parts[1] in index:
                    test_paths.append(os.path.join(images, parts[0]))
                    test_labels.append(index[parts[1]])
    elif os.path.isdir(images):  # already reorganised into val/images/<wnid>/
        for w in wnids:
            sub = os.path.join(images, w)
            if os.path.isdir(sub):
                files = sorted(f for f in os.listdir(sub) if f.lower().endswith(IMAGE_EXTENSIONS))
                test_paths += [os.path.join(sub, f) for f in files]
                test_labels += [index[w]] * len(files)
    if not train_paths or not test_paths:
        raise DataNotFoundError(f"Tiny-ImageNet under {root} has no train or val images")
    return (train_paths, torch.tensor(train_labels, dtype=torch.int64),
            test_paths, torch.tensor(test_labels, dtype=torch.int64))


def split_indices(n, val_split, seed=42):
    """Fixed-seed train/val index split: the first int((1 - val_split) n) of a permutation train."""
    if not 0.0 <= val_split < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int((1.0 - val_split) * n)
    return perm[:n_train], perm[n_train:]


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------

class TensorLoader:
    """Batches of in-memory uint8 images, augmented with batched tensor ops on their device.

    Each pass draws its shuffle and augmentation from a generator seeded by (seed, epoch), so a
    run resumed at epoch e sees exactly the batches an uninterrupted run would. `set_epoch(e)`
    picks the epoch explicitly; otherwise it advances by one per pass. The shuffle and every crop
    offset and flip of the epoch are drawn before its first batch and copied to the device once
    (pinned, non-blocking on CUDA), so the host never waits for the GPU between batches.
    """

    def __init__(self, images, labels, spec, batch_size, shuffle=False, augment=False, seed=0,
                 device="cpu", drop_last=False):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.spec, self.batch_size, self.shuffle, self.augment = spec, int(batch_size), shuffle, augment
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0
        self.rank, self.world = 0, 1
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)
        self.dataset = self.labels  # len(loader.dataset) = number of images, as for a DataLoader

    def shard(self, rank, world):
        """Read only this process's share of every epoch's order (DistributedDataParallel); (0, 1) undoes it."""
        self.rank, self.world = int(rank), int(world)

    def _count(self):
        n = len(self.labels)
        return (n - n % self.world) // self.world

    def __len__(self):
        n = self._count()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def num_samples(self):
        return self._count()

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _generator(self):
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        gen = self._generator()
        self.epoch += 1
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.world > 1:  # equal shards (the remainder is dropped) so every process runs the same steps
            order = order[: n - n % self.world][self.rank::self.world]
            n = len(order)
        starts = range(0, n - n % self.batch_size if self.drop_last else n, self.batch_size)
        # The whole epoch's random draws are made here, before the first batch, in the per-batch order,
        # and reach the device in one non-blocking copy each: no batch waits on the host or blocks it.
        order = _to_device(order, self.device)
        draws = None
        if self.augment:
            sizes = [min(self.batch_size, n - s) for s in starts]
            draws = _to_device(augmentation_draws(self.spec, sizes, gen), self.device)
        for start in starts:
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            if draws is not None:  # on the uint8 images: a quarter of the bytes to move, the same values after
                oy, ox, flip = draws[:, start:start + self.batch_size]
                x = crop_flip(x, self.spec, oy, ox, flip)
            yield (x.float().div_(255.0) - self.mean) / self.std, self.labels[idx]


def _to_device(t, device):
    """A CPU tensor moved to `device` without blocking the host: from pinned memory with non_blocking=True
    on CUDA (the caching host allocator keeps the pinned block until the copy is done), as is on the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def augmentation_draws(spec, batch_sizes, generator):
    """The crop offsets and flips of consecutive batches of `batch_sizes` samples, as a (3, sum) int64 CPU
    tensor of rows (row offsets, column offsets, flips as 0/1).

    Drawn batch after batch in augment_batch's order (that batch's row offsets, column offsets, then its
    flips), so an epoch's draws made at once are exactly the draws made batch by batch. A row the spec has
    no randomness for (no padding, no flip) is zeros and draws nothing.
    """
    p = spec.crop_padding
    parts = []
    for b in batch_sizes:
        zeros = torch.zeros(b, dtype=torch.long)
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator) if p > 0 else zeros
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator) if p > 0 else zeros
        flip = (torch.rand(b, generator=generator) < 0.5).long() if spec.flip else zeros
        parts.append(torch.stack([oy, ox, flip]))
    return torch.cat(parts, 1) if parts else torch.zeros(3, 0, dtype=torch.long)


def augment_batch(x, spec, generator):
    """Random crop with zero padding and random horizontal flip, per sample, as batched tensor ops.

    Same distribution as torchvision's RandomCrop(size, padding) + RandomHorizontalFlip(0.5). Any
    dtype (the loader crops uint8 images). Per batch it draws the row offsets, the column offsets,
    then the flips from `generator` (augmentation_draws); crop and flip are one gather (crop_flip).
    TensorLoader makes a whole epoch's draws at once instead; the batches are the same.
    """
    if not spec.crop_padding and not spec.flip:
        return x
    oy, ox, flip = augmentation_draws(spec, [x.shape[0]], generator).to(x.device)
    return crop_flip(x, spec, oy, ox, flip)


def crop_flip(x, spec, oy, ox, flip):
    """Crop every sample k of `x` at offset (oy[k], ox[k]) of its zero-padded image and mirror it where
    flip[k] is 1, as one gather; oy, ox, flip are int64 tensors on x's device, so nothing syncs."""
    b, c, h, w = x.shape
    p = spec.crop_padding
    dev = x.device
    if not p and not spec.flip:
        return x
    if p > 0:
        x = F.pad(x, (p, p, p, p))
    cols = torch.arange(w, device=dev).expand(b, w)
    if spec.flip:
        cols = torch.where(flip[:, None].bool(), w - 1 - cols, cols)
    # flat source index of output pixel (i, j) of sample k: (oy_k + i) * padded width + ox_k + col_k(j)
    index = ((oy[:, None] + torch.arange(h, device=dev)) * (w + 2 * p))[:, :, None] + (ox[:, None] + cols)[:, None, :]
    index = index.view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A shuffle whose order depends only on (seed, epoch), like TensorLoader's, so resumed runs match."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0
        self.rank, self.world = 0, 1

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def shard(self, rank, world):
        self.rank, self.world = int(rank), int(world)

    def __len__(self):
        return (self.n - self.n % self.world) // self.world

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.n, generator=gen)
        return iter(order[: self.n - self.n % self.world][self.rank::self.world].tolist())


class _ArrayDataset(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images + labels through torchvision transforms (the classic per-image path)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


class _FileDataset(torch.utils.data.Dataset):
    """Image files decoded on access (Tiny-ImageNet)."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from torchvision.io import ImageReadMode, decode_image, read_file

        return self.transform(decode_image(read_file(self.paths[i]), mode=ImageReadMode.RGB)), int(self.labels[i])


def torchvision_transforms(spec, train):
    """The published torchvision pipeline, on uint8 CHW tensors."""
    from torchvision.transforms import v2 as T

    ops = []
    if train:
        ops.append(T.RandomCrop(spec.image_size, padding=spec.crop_padding))
        if spec.flip:
            ops.append(T.RandomHorizontalFlip())
        if spec.color_jitter:
            ops.append(T.ColorJitter(*spec.color_jitter))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(spec.mean, spec.std)]
    return T.Compose(ops)


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
        out = torch.utils.data.DataLoader(ds, batch_size=loader.batch_size, sampler=sampler,
                                          num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                                          persistent_workers=loader.num_workers > 0)
        if sampler is not None:
            out.set_epoch, out.shard = sampler.set_epoch, sampler.shard
        return out

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
            ds = _FileDataset(x, y, tf) if isinstance(x, list) else _ArrayDataset(x, y, tf)
            sampler = EpochShuffleSampler(len(ds), seed) if k == "train" else None
            loaders[k] = torch.utils.data.DataLoader(
                ds, batch_size=batch_size if k == "train" else eval_batch_size, sampler=sampler,
                num_workers=num_workers, pin_memory=pin, persistent_workers=num_workers > 0)
            if sampler is not None:
                loaders[k].set_epoch = sampler.set_epoch
                loaders[k].shard = sampler.shard
    return DataBundle(loaders["train"], loaders["val"], loaders["test"], spec, backend, sizes)
