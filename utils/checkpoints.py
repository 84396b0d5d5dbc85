"""Checkpoints: one dict format for every stage, atomic writes, and the published formats on load.

Our format (loadable with `torch.load(path, weights_only=True)`):

    {"format": "bridge-v1", "model": m_name, "dataset": ..., "stage": ..., "sparsity": float,
     "state_dict": {...},            # masked models keep weight_orig / weight_mask keys
     "metrics": {"val_acc": ..., "test_acc": ...}, "args": {...}, ...stage-specific keys}

Accepted on load as well (published code): a raw reparametrised state_dict, the dense
`{"net": state_dict, "acc": ..., "epoch": ...}` file, and the iterative per-episode dict with
`model_state_dict`. Whole pickled modules are read only with `trust_pickle=True`.
"""
import argparse
import os

import torch

from utils.atomic_save import atomic_torch_save
from utils.errors import CheckpointError
from utils.masks import count_pruned_params, masked_layer_names, model_sparsity

FORMAT = "bridge-v1"
COMPACT_FORMAT = "bridge-compact-v1"  # filters physically removed (utils.compact)


def jsonable(obj):
    """Namespace / dict / list of primitives -> plain Python containers safe for weights_only loads."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.device):
        return str(obj)
    return str(obj)


def cpu_state_dict(model):
    """The model's state_dict on the CPU, in the default (contiguous) memory layout."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def make_checkpoint(model, m_name, dataset, stage, arguments=None, metrics=None, **extra):
    """Our checkpoint dict for `model` (sparsity from its masks; 0 for a dense model); `arguments`: the
    run's arguments as printed (hparams.record), stored under "args"."""
    total, surviving, _ = count_pruned_params(model)
    ckpt = {
        "format": FORMAT,
        "model": m_name,
        "dataset": dataset,
        "stage": stage,
        "sparsity": model_sparsity(model),
        "nonzero_params": surviving,
        "prunable_params": total,
        "state_dict": cpu_state_dict(model),
        "metrics": jsonable(metrics or {}),
        "args": jsonable(arguments or {}),
    }
    ckpt.update(extra)
    return ckpt


def save_checkpoint(path, model, m_name, dataset, stage, arguments=None, metrics=None, **extra):
    """Build our checkpoint dict for `model` and write it atomically. Returns the path."""
    return atomic_torch_save(make_checkpoint(model, m_name, dataset, stage, arguments, metrics, **extra), path)


def _strip_prefix(state_dict, prefix="module."):
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_checkpoint(path, map_location="cpu", trust_pickle=False):
    """Read a checkpoint in any accepted format and return our dict form.

    The result always has "state_dict", "format" (ours, or "published-raw" / "published-dense" /
    "published-episode" / "pickled-module"), and whatever metadata the file held.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "weights_only" in msg:
            if not trust_pickle:
                raise CheckpointError(
                    f"{path} holds pickled Python objects (e.g. a whole nn.Module saved by the published code); "
                    "re-run with --trust_pickle only if you trust its source") from None
            try:
                obj = torch.load(path, map_location=map_location, weights_only=False)
            except Exception as exc2:
                raise CheckpointError(f"cannot read checkpoint {path}: {type(exc2).__name__}: {exc2}") from None
        else:
            raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or not a torch checkpoint "
                                  f"({type(exc).__name__})") from None
    return normalise_checkpoint(obj, path)


def load_state_file(path):
    """A run-state file of this project (resume state, search state): a plain weights_only dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"state file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}); "
                              "delete it to start over") from None


def normalise_checkpoint(obj, source="<memory>"):
    """Our dict form of a loaded object (see load_checkpoint)."""
    if isinstance(obj, torch.nn.Module):
        return {"format": "pickled-module", "state_dict": obj.state_dict(), "metrics": {}}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source} is not a checkpoint (it holds a {type(obj).__name__})")
    if obj.get("format") == COMPACT_FORMAT:
        return dict(obj)
    if obj.get("format") == FORMAT:
        out = dict(obj)
        out["state_dict"] = _strip_prefix(obj["state_dict"])
        return out
    if "net" in obj and isinstance(obj["net"], dict):
        acc = obj.get("acc")
        return {"format": "published-dense", "state_dict": _strip_prefix(obj["net"]), "stage": "pretrain",
                "metrics": {"val_acc": float(acc)} if acc is not None else {}, "epoch": obj.get("epoch")}
    if "model_state_dict" in obj and isinstance(obj["model_state_dict"], dict):
        acc = obj.get("accuracy")
        return {"format": "published-episode", "state_dict": _strip_prefix(obj["model_state_dict"]),
                "stage": "regrowth_episode", "metrics": {"test_acc": float(acc)} if acc is not None else {},
                "allocation": obj.get("allocation")}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": "published-raw", "state_dict": _strip_prefix(obj), "metrics": {}}
    raise CheckpointError(f"{source} is not a checkpoint this project understands "
                          f"(keys: {', '.join(sorted(map(str, obj))[:8])})")


def _describe_keys(keys, limit=6):
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def add_masks_for_state(model, state_dict):
    """Give `model` the masks a state_dict carries: every `X.p_mask` key becomes a reparametrised `p` of X.

    Unstructured checkpoints mask Conv/Linear weights; structured ones also mask BatchNorm weights
    and biases and conv biases.
    """
    import torch.nn.utils.prune as prune

    modules = dict(model.named_modules())
    for key in state_dict:
        if not key.endswith("_mask"):
            continue
        mod_name, _, param = key[: -len("_mask")].rpartition(".")
        module = modules.get(mod_name)
        if module is not None and not hasattr(module, param + "_mask") and isinstance(
                getattr(module, param, None), torch.nn.Parameter):
            prune.identity(module, param)
    return model


def load_state_into(model, state_dict, source="checkpoint"):
    """Load a (masked or plain) state_dict into `model`, adding masks first when the state has them.

    A mismatch raises CheckpointError naming the missing and unexpected keys.
    """
    add_masks_for_state(model, state_dict)
    own = model.state_dict()
    missing = set(own) - set(state_dict)
    unexpected = set(state_dict) - set(own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe_keys(unexpected)}")
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(parts))
    bad = [k for k in own if own[k].shape != state_dict[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{source} does not fit this model: {len(bad)} tensors differ in shape, e.g. "
                              f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}")
    model.load_state_dict(state_dict)
    return model


def check_model_name(ckpt, m_name, source="checkpoint"):
    """A checkpoint that records the model it was made for must match `m_name` (canonical names)."""
    from models import canonical_model_name

    recorded = ckpt.get("model")
    if recorded is not None and canonical_model_name(recorded) != canonical_model_name(m_name):
        raise CheckpointError(f"{source} was made for model {recorded!r}, not {m_name!r}; pass --m_name {recorded}")


def model_from_checkpoint(path, m_name, device="cpu", expect=None, trust_pickle=False):
    """Build `m_name`, load the checkpoint at `path` into it, and return (model, checkpoint dict).

    expect="dense" / "sparse" checks the kind of checkpoint a stage needs.
    """
    from models import model_loader

    ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
    check_model_name(ckpt, m_name, path)
    masked = bool(masked_layer_names(ckpt["state_dict"]))
    if expect == "sparse" and not masked:
        raise CheckpointError(f"{path} is a dense checkpoint (no weight masks) but a pruned one is expected here")
    if expect == "dense" and masked and model_sparsity_of_state(ckpt["state_dict"]) > 0:
        raise CheckpointError(f"{path} is a pruned checkpoint (sparsity {model_sparsity_of_state(ckpt['state_dict']):.4f}) "
                              "but the dense pretrained model is expected here")
    model = model_loader(m_name, dataset=ckpt.get("dataset"))
    load_state_into(model, ckpt["state_dict"], path)
    return model.to(device), ckpt


def model_sparsity_of_state(state_dict):
    """Mask sparsity of a state_dict (0 for a plain one)."""
    masks = [v for k, v in state_dict.items() if k.endswith("weight_mask") and v.dim() >= 2]  # Conv/Linear only
    total = sum(m.numel() for m in masks)
    return float(sum((m == 0).sum().item() for m in masks)) / total if total else 0.0


def peek_checkpoint(path, trust_pickle=False):
    """Our dict form of a checkpoint with its tensors memory-mapped, not read: for its metadata (stage, sparsity,
    metrics, args) when a folder of checkpoints is scanned. Unreadable files raise load_checkpoint's clear error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return load_checkpoint(path, trust_pickle=trust_pickle)
    return normalise_checkpoint(obj, path)


def checkpoint_metrics(path):
    """(sparsity, metrics dict) recorded in a checkpoint, without reading its tensors (the mask sparsity is
    computed only for files that do not record it)."""
    ckpt = peek_checkpoint(path)
    sp = ckpt.get("sparsity")
    if sp is None:
        sp = model_sparsity_of_state(ckpt["state_dict"])
    return float(sp), dict(ckpt.get("metrics") or {})


__all__ = ["FORMAT", "COMPACT_FORMAT", "atomic_torch_save", "make_checkpoint", "save_checkpoint", "load_checkpoint",
           "normalise_checkpoint", "peek_checkpoint", "load_state_file", "load_state_into", "check_model_name", "model_from_checkpoint",
           "model_sparsity_of_state", "checkpoint_metrics", "jsonable", "cpu_state_dict"]
