"""The classic per-image path: torchvision transforms in a DataLoader (Tiny-ImageNet), with a shuffle that
depends only on (seed, epoch) so resumed runs see the same batches."""
import torch

from data.readers import decode_file


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


class TransformDataset(torch.utils.data.Dataset):
    """Images + labels through torchvision transforms: a uint8 (N, 3, H, W) tensor, or a list of image files
    decoded on access (Tiny-ImageNet)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = decode_file(self.images[i]) if isinstance(self.images, list) else self.images[i]
        return self.transform(image), int(self.labels[i])


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


class EpochLoader(torch.utils.data.DataLoader):
    """A training DataLoader whose epoch and shard are those of its EpochShuffleSampler (the TensorLoader API)."""

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def shard(self, rank, world):
        self.sampler.shard(rank, world)


def make_loader(dataset, sampler=None, **kwargs):
    """An EpochLoader over a training split's EpochShuffleSampler, else a plain in-order DataLoader."""
    return (EpochLoader if sampler is not None else torch.utils.data.DataLoader)(dataset, sampler=sampler, **kwargs)
