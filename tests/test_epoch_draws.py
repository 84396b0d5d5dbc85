"""TensorLoader draws a whole epoch's crop offsets and flips at once: the batches are bit-identical to
drawing batch by batch, and the per-batch path copies nothing between host and device."""
import pytest
import torch
import torch.nn.functional as F

import data.tensor_loader as dl
from data.specs import SPECS
from data.tensor_loader import TensorLoader


def _reference_epoch(images, labels, spec, batch_size, seed, epoch, shuffle=True, drop_last=False, rank=0, world=1):
    """The per-batch loader as it was: per batch, draw row offsets, column offsets, then flips from the
    (seed, epoch) generator, and crop / mirror every sample with slicing."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(labels)
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    if world > 1:
        order = order[: n - n % world][rank::world]
        n = len(order)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    p, size = spec.crop_padding, images.shape[-1]
    out = []
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        b = len(idx)
        oy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        flip = torch.rand(b, generator=gen) < 0.5 if spec.flip else torch.zeros(b, dtype=torch.bool)
        crops = []
        for k, i in enumerate(idx.tolist()):
            crop = F.pad(images[i], (p, p, p, p))[:, oy[k]:oy[k] + size, ox[k]:ox[k] + size]
            crops.append(crop.flip(2) if flip[k] else crop)
        x = torch.stack(crops)
        out.append(((x.float().div_(255.0) - mean) / std, labels[idx]))
    return out


@pytest.mark.parametrize("dataset,batch_size,drop_last,world", [
    ("CIFAR10", 16, False, 1),   # crop + flip, a partial last batch
    ("CIFAR10", 16, True, 1),    # the partial batch dropped
    ("digits", 12, False, 1),    # crop, no flip
    ("CIFAR10", 7, False, 2),    # one shard of two
])
def test_epoch_batches_bit_identical_to_per_batch_draws(dataset, batch_size, drop_last, world):
    spec = SPECS[dataset]
    torch.manual_seed(0)
    x = torch.randint(0, 256, (53, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(53)
    loader = TensorLoader(x, y, spec, batch_size, shuffle=True, augment=True, seed=3, drop_last=drop_last)
    loader.shard(world - 1, world)
    for epoch in (0, 4):
        loader.set_epoch(epoch)
        got = list(loader)
        want = _reference_epoch(x, y, spec, batch_size, 3, epoch, drop_last=drop_last, rank=world - 1, world=world)
        assert len(got) == len(want) == len(loader)
        for (gx, gy), (wx, wy) in zip(got, want):
            assert torch.equal(gy, wy)
            assert torch.equal(gx, wx)  # bit-identical, not merely close


def test_augment_batch_alone_still_draws_per_batch():
    spec = SPECS["CIFAR10"]
    x = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    ref = _reference_epoch(x, torch.arange(20), spec, 20, 0, 0, shuffle=False)[0][0]
    got = dl.augment_batch(x, spec, torch.Generator().manual_seed(0 * 1_000_003 + 0))
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.equal((got.float().div_(255.0) - mean) / std, ref)


def test_draws_and_copies_happen_once_per_epoch_not_per_batch(monkeypatch):
    """All random draws and host-device moves happen before the first batch; the batches themselves only
    slice device tensors (no .to / .cpu / .item / .tolist, no generator draws)."""
    x = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    loader = TensorLoader(x, torch.arange(100), SPECS["CIFAR10"], 10, shuffle=True, augment=True, seed=1)
    moved = []
    real_to_device = dl._to_device
    monkeypatch.setattr(dl, "_to_device", lambda t, d: moved.append(tuple(t.shape)) or real_to_device(t, d))
    draws = []
    for name in ("randint", "rand", "randperm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, _name=name, **k: draws.append(_name) or _real(*a, **k))

    it = iter(loader)
    next(it)  # the epoch's set-up runs up to the first batch
    assert moved == [(100,), (3, 100)]  # the order, then the epoch's (row, column, flip) draws
    assert draws == ["randperm"] + ["randint", "randint", "rand"] * 10  # per batch, in the per-batch order

    calls = []
    for name in ("to", "cpu", "item", "tolist", "cuda"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, _name=name, **k: calls.append(_name) or _real(self, *a, **k))
    draws.clear()
    rest = list(it)
    assert len(rest) == 9
    assert calls == [] and draws == [] and len(moved) == 2


class _FakeCpuTensor:
    """Records what _to_device does with a tensor (a CUDA target cannot be built on this machine)."""

    def __init__(self, log):
        self.log = log

    def pin_memory(self):
        self.log.append("pin_memory")
        return self

    def to(self, device, non_blocking=False):
        self.log.append(("to", str(device), non_blocking))
        return self


def test_to_device_pins_and_copies_without_blocking_on_cuda():
    log = []
    dl._to_device(_FakeCpuTensor(log), "cuda")
    assert log == ["pin_memory", ("to", "cuda", True)]
    log.clear()
    t = _FakeCpuTensor(log)
    assert dl._to_device(t, "cpu") is t and log == []  # already there: nothing to copy
