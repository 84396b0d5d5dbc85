"""Raw data: every data set becomes uint8 images (N, 3, H, W) + int64 labels, or lists of image files,
and the fixed-seed train / validation split. The user's folders are only read."""
import importlib.util
import os
import socket

import numpy as np
import torch
import torch.nn.functional as F

from data.specs import CIFAR10_CLASSES, IMAGE_EXTENSIONS
from utils.cache import DiskCache, cache_key, default_cache_dir
from utils.errors import DataNotFoundError


def decode_file(path):
    """One image file as a uint8 (3, H, W) tensor (torchvision is imported on first use: 1.6 s a process)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def _decode_images(paths):
    """Decode image files to a uint8 (N, 3, H, W) tensor; JPEGs go through torchvision's batched decoder."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    jpeg = [p for p in paths if p.lower().endswith((".jpg", ".jpeg"))]
    if len(jpeg) == len(paths):
        out = decode_jpeg([read_file(p) for p in paths], mode=ImageReadMode.RGB)
    else:
        out = [decode_file(p) for p in paths]
    return torch.stack(out) if len(out) else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)


def decoded_images(paths):
    """_decode_images with an on-disk cache: decoding CIFAR-10's 60,000 JPEGs costs ~11 s per process on
    2 cores, loading the decoded uint8 tensor back ~0.3 s. The key covers every file's path, size and mtime,
    so a changed file re-decodes; the user's folder is only read."""
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


def digits_images_and_labels():
    """scikit-learn's bundled digits as float64 (1797, 8, 8) images in 0..16 and int labels.

    Read straight from the package's digits.csv.gz (64 pixels then the label per row, what load_digits
    parses) when that file is where scikit-learn keeps it: importing sklearn costs ~1.1 s, paid by
    every stage on the demo data. Any other layout goes through sklearn.datasets.load_digits.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    csv = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if csv and os.path.isfile(csv):
        rows = np.loadtxt(csv, delimiter=",")
        return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_digits_arrays(test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 digits (1,797 real images), upscaled to 32x32x3 uint8.

    scikit-learn has no official test split: a fixed permutation (seed 0) puts 20% aside.
    """
    images, labels = digits_images_and_labels()
    x = torch.from_numpy(images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(labels).long()
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
