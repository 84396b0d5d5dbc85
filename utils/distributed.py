"""torch.distributed helpers: the same scripts run alone or under `torchrun --nproc_per_node N`.

Under torchrun (WORLD_SIZE > 1) `init()` joins the process group (NCCL when every process has its
own GPU, gloo otherwise). Regrowth searches then evaluate the episodes of one policy update on
different processes (utils/regrowth_search.py); pretraining and finetuning wrap the model in
DistributedDataParallel with each process reading its own shard of every batch order. Only the main
process (rank 0) writes files and logs.
"""
import os

import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return rank() == 0


def init(device_arg="auto"):
    """Join the process group when launched by torchrun; returns the device this process should use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_arg in ("auto", "cuda") and torch.cuda.is_available()
    if world > 1 and not is_distributed():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_nccl = want_cuda and torch.cuda.device_count() >= world
        if use_nccl:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_nccl else "gloo")
        if use_nccl:
            return torch.device("cuda", local)
        if want_cuda:
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    return None


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


def all_reduce_sum(tensor):
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def barrier():
    if is_distributed():
        dist.barrier()


def wrap_ddp(model):
    """DistributedDataParallel around the model when distributed (the model itself otherwise)."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def unwrap(model):
    return model.module if hasattr(model, "module") else model
