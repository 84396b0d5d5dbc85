"""The tensor loader: batches of in-memory uint8 images, augmented with batched tensor ops on their device
(CIFAR-size data; no per-image Python work)."""
import torch
import torch.nn.functional as F


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
