"""The classic per-image path: torchvision transforms in a DataLoader (Tiny-ImageNet), with a shuffle that
depends only on (seed, epoch) so resumed runs see the same batches."""
import torch


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


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images + labels through torchvision transforms (the classic per-image path)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


class FileDataset(torch.utils.data.Dataset):
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


class EpochLoader(torch.utils.data.DataLoader):
    """A training DataLoader whose epoch and shard are those of its EpochShuffleSampler (the TensorLoader API)."""

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def shard(self, rank, world):
        self.sampler.shard(rank, world)
