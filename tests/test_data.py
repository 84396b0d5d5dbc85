"""Data loaders on small generated folders in the real layouts, plus the batched augmentation."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data.data_loader import data_loader
from data.readers import digits_images_and_labels, split_indices
from data.specs import CIFAR10_CLASSES, SPECS
from data.tensor_loader import TensorLoader, augment_batch
from data.torch_loader import torchvision_transforms
from utils.errors import DataNotFoundError, UnknownChoiceError


def _write_images(folder, n, size, seed):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, f"{i:04d}.jpg"), quality=95)


@pytest.fixture
def cifar_folder(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for c, cls in enumerate(CIFAR10_CLASSES):
            _write_images(tmp_path / "cifar10" / split / cls, n, 32, seed=c + (100 if split == "test" else 0))
    return tmp_path


def _snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


@pytest.fixture
def tiny_folder(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    for i, w in enumerate(wnids):
        _write_images(root / "train" / w / "images", 4, 64, seed=i)
    _write_images(root / "val" / "images", 6, 64, seed=9)
    with open(root / "val" / "val_annotations.txt", "w") as fh:
        for i in range(6):
            fh.write(f"{i:04d}.jpg\t{wnids[i % 3]}\t0\t0\t63\t63\n")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return tmp_path


def test_cifar_image_folder(cifar_folder):
    data = data_loader(str(cifar_folder), val_split=0.2, batch_size=8, dataset="CIFAR10", download=False)
    assert data.sizes == {"train": 48, "val": 12, "test": 20}
    x, y = next(iter(data.train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    labels = torch.cat([y for _, y in data.test])
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]  # class folders in CIFAR label order
    assert len(data.train) == 6  # batch_size honoured


def test_val_split_fixed_and_disjoint():
    a_tr, a_va = split_indices(100, 0.1, seed=42)
    b_tr, b_va = split_indices(100, 0.1, seed=42)
    assert torch.equal(a_va, b_va) and len(a_va) == 10 and len(a_tr) == 90
    assert not set(a_tr.tolist()) & set(a_va.tolist())
    with pytest.raises(ValueError):
        split_indices(10, 1.0)


def test_val_and_test_use_test_transforms(cifar_folder):
    data = data_loader(str(cifar_folder), val_split=0.2, batch_size=8, dataset="CIFAR10", download=False)
    first = torch.cat([x for x, _ in data.val])
    second = torch.cat([x for x, _ in data.val])
    assert torch.equal(first, second)  # no augmentation on val
    # the test split is the decoded images, only normalised (no crop, no flip), in folder order
    spec = SPECS["CIFAR10"]
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    expected = torch.stack([
        (torch.from_numpy(np.array(Image.open(cifar_folder / "cifar10" / "test" / cls / f"{i:04d}.jpg")
                                     .convert("RGB"))).permute(2, 0, 1).float() / 255 - mean) / std
        for cls in CIFAR10_CLASSES for i in range(2)])
    got = torch.cat([x for x, _ in data.test])
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    # while the training split is augmented: per-image sums (blind to the shuffle order) differ between passes
    a, b = (torch.cat([x for x, _ in data.train]).sum((1, 2, 3)).sort().values for _ in range(2))
    assert not torch.allclose(a, b)


def test_tensor_and_loader_backends_agree_on_eval_data(cifar_folder):
    a = data_loader(str(cifar_folder), val_split=0.2, batch_size=8, dataset="CIFAR10", download=False)
    b = data_loader(str(cifar_folder), val_split=0.2, batch_size=8, dataset="CIFAR10", download=False,
                    backend="loader", num_workers=0)
    for la, lb in ((a.val, b.val), (a.test, b.test)):
        xa = torch.cat([x for x, _ in la])
        xb = torch.cat([x for x, _ in lb])
        assert torch.allclose(xa, xb, atol=1e-6)


def test_tiny_imagenet_read_in_place(tiny_folder):
    before = _snapshot(tiny_folder)
    data = data_loader(str(tiny_folder), val_split=0.25, batch_size=4, dataset="tiny_imagenet", num_workers=0)
    assert data.sizes == {"train": 9, "val": 3, "test": 6}
    labels = torch.cat([y for _, y in data.test])
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]  # from val_annotations.txt
    x, _ = next(iter(data.train))
    assert x.shape == (4, 3, 64, 64)
    assert _snapshot(tiny_folder) == before  # the user's folder is not reorganised


def test_tiny_imagenet_reorganised_layout(tiny_folder):
    root = tiny_folder / "tiny-imagenet-200" / "val"
    for i, w in enumerate(["n01", "n02", "n03"] * 2):  # the layout the published loader leaves behind
        os.makedirs(root / "images" / w, exist_ok=True)
        os.rename(root / "images" / f"{i:04d}.jpg", root / "images" / w / f"{i:04d}.jpg")
    data = data_loader(str(tiny_folder), val_split=0.25, batch_size=4, dataset="tiny_imagenet", num_workers=0)
    assert sorted(torch.cat([y for _, y in data.test]).tolist()) == [0, 0, 1, 1, 2, 2]


def test_digits_is_embedded():
    data = data_loader(dataset="digits", batch_size=64)
    assert data.sizes["train"] + data.sizes["val"] + data.sizes["test"] == 1797
    x, y = next(iter(data.train))
    assert x.shape == (64, 3, 32, 32) and y.max() < 10


def test_digits_read_from_the_bundled_file_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    images, labels = digits_images_and_labels()
    reference = load_digits()
    assert images.dtype == reference.images.dtype and np.array_equal(images, reference.images)
    assert np.array_equal(labels, reference.target) and labels.dtype.kind == "i"


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar10"):
        data_loader(str(tmp_path), dataset="CIFAR10", download=False)
    with pytest.raises(DataNotFoundError, match="tiny-imagenet-200"):
        data_loader(str(tmp_path), dataset="tiny_imagenet")
    with pytest.raises(UnknownChoiceError, match="digits"):
        data_loader(str(tmp_path), dataset="mnist")


def test_batched_augmentation_matches_torchvision_outcomes():
    """Every augmented image is one of torchvision's possible RandomCrop(pad 4) + flip outcomes."""
    spec = SPECS["CIFAR10"]
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    x = img.float().div(255).expand(256, -1, -1, -1).contiguous()
    out = augment_batch(x, spec, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(img.float().div(255), (4, 4, 4, 4))
    candidates = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + 32, dx:dx + 32]
            candidates[(dy, dx, 0)] = crop
            candidates[(dy, dx, 1)] = crop.flip(2)
    hits = []
    for o in out:
        key = next((k for k, c in candidates.items() if torch.equal(o, c)), None)
        assert key is not None
        hits.append(key)
    flips = sum(k[2] for k in hits) / len(hits)
    assert 0.35 < flips < 0.65
    assert len({k[:2] for k in hits}) > 40  # offsets spread over the 81 possibilities
    tv = torchvision_transforms(spec, train=True)  # the classic path exists and has the same ops
    assert [type(t).__name__ for t in tv.transforms][:2] == ["RandomCrop", "RandomHorizontalFlip"]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_batched_augmentation_equals_per_sample_crops_from_the_same_draws(dtype):
    """The batched gather is exactly a per-sample pad-crop-flip driven by the documented draw order
    (row offsets, column offsets, flips), so batches do not depend on the implementation or dtype."""
    spec = SPECS["CIFAR10"]
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8).to(dtype)
    out = augment_batch(x, spec, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    oy = torch.randint(0, 9, (64,), generator=g)
    ox = torch.randint(0, 9, (64,), generator=g)
    flip = torch.rand(64, generator=g) < 0.5
    for k in range(64):
        crop = torch.nn.functional.pad(x[k], (4, 4, 4, 4))[:, oy[k]:oy[k] + 32, ox[k]:ox[k] + 32]
        assert torch.equal(out[k], crop.flip(2) if flip[k] else crop), k
    assert out.dtype == dtype
    assert torch.equal(augment_batch(x.float(), spec, torch.Generator().manual_seed(7)), out.float())


def test_tensor_loader_epochs_are_reproducible():
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(50)
    loader = TensorLoader(x, y, SPECS["CIFAR10"], 16, shuffle=True, augment=True, seed=3)
    loader.set_epoch(5)
    a = [b for b in loader]
    loader.set_epoch(5)
    b = [b for b in loader]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    c = [b for b in loader]  # epoch 6 differs
    assert not torch.equal(a[0][1], c[0][1])
    assert len(loader) == 4
