"""torch.distributed helpers: the same scripts run alone or under `torchrun --nproc_per_node N`.

Under torchrun (WORLD_SIZE > 1) `init()` joins the process group (NCCL when every process on a node
has its own GPU, gloo otherwise); each process uses GPU LOCAL_RANK, so `--device cuda:N` is refused
there. Regrowth searches then evaluate the episodes of one policy update on different processes
(utils/regrowth/search.py); pretraining and finetuning wrap the model in DistributedDataParallel with
each process reading its own shard of every batch order. Only the main process (rank 0) writes files
and logs.
"""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from utils.errors import BridgeError
from utils.runtime import resolve_device


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return rank() == 0


def init(device_arg="auto"):
    """Join the process group when launched by torchrun; returns the device this process should use.

    NCCL when every process on this node has a GPU of its own (LOCAL_WORLD_SIZE, the processes on
    this node, against this node's GPUs: WORLD_SIZE counts all nodes), gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        return None
    device = resolve_device(device_arg)  # under torchrun: GPU LOCAL_RANK (mod the GPUs present)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    use_nccl = device.type == "cuda" and torch.cuda.device_count() >= local_world
    if use_nccl:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_nccl else "gloo")
    return device


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...] (a one-element list without distribution)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier():
    if is_distributed():
        dist.barrier()


def mask_buffer_names(model):
    """Names of the mask buffers of torch.nn.utils.prune reparametrisations (`features.0.weight_mask`, ...)."""
    return [f"{prefix}.{b}" if prefix else b
            for prefix, m in model.named_modules()
            for b, _ in m.named_buffers(recurse=False)
            if b.endswith("_mask") and hasattr(m, b[: -len("_mask")] + "_orig")]


def _mask_checksums(model, names):
    """Per mask (alive count, sum of a hash of the alive positions): differs when the 0/1 patterns differ."""
    buffers = dict(model.named_buffers())
    sums = []
    for n in names:
        alive = buffers[n].detach().reshape(-1) != 0  # logical order, whatever the memory format
        pos = torch.arange(alive.numel(), device=alive.device)
        sums.append(torch.stack([alive.sum(), ((pos * 2654435761) % 2**31)[alive].sum()]))
    return torch.stack(sums).tolist() if sums else []


def check_masks_equal(model, names):
    """Raise BridgeError unless every process holds the same masks (compared by checksum, once)."""
    per_rank = all_gather_object(_mask_checksums(model, names))
    bad = sorted({names[i] for sums in per_rank[1:] for i, (a, b) in enumerate(zip(per_rank[0], sums)) if a != b})
    if bad:
        ranks = [r for r, sums in enumerate(per_rank) if sums != per_rank[0]]
        raise BridgeError(f"the pruning masks differ between processes (rank 0 vs rank(s) {ranks}) in "
                          f"{len(bad)} layer(s), e.g. {', '.join(bad[:3])}; every process must hold the same sparse model")


def wrap_ddp(model):
    """DistributedDataParallel around the model when distributed (the model itself otherwise).

    DDP broadcasts every buffer from rank 0 before each forward; the pruning masks are buffers too
    (~59 MB per step for vgg16) but never change during training, so they are left out of that
    broadcast and checked to be equal on all processes once, here. BatchNorm running statistics
    are still broadcast, as DDP does by default.
    """
    if not is_distributed():
        return model
    masks = mask_buffer_names(model)
    check_masks_equal(model, masks)
    # Sets the names DDP skips (at its initial sync and at every forward); it must precede construction.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, masks)
    dev = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
