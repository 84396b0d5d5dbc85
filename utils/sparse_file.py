"""The sparse weight file: a masked model stored the way `utils.boundary.storage_bytes` counts it.

Each masked Conv2d / Linear weight keeps only its alive entries (mask 1), in row-major order, plus where
they are:

    bitmask: {layer}.values (value dtype), {layer}.bitmask (uint8: the flattened mask, 8 entries a byte)
    csr:     {layer}.values, {layer}.col_idx (int32: the column of each value, the weight seen as
             out_channels x the rest), {layer}.row_ptr (int32, out_channels + 1)

Every other parameter and floating buffer (biases, BatchNorm affine values and running statistics) is
stored dense in the value dtype; the masks of other masked parameters (a filter-pruned model's conv bias
and BatchNorm masks) as packed bits like a bitmask. What is not a tensor (the model name, data set, storage,
value dtype, the shapes, BatchNorm's batch counters) lives in the safetensors header, so the file's size is the
byte count plus that header (8 bytes of length and its JSON, stated by `header_bytes`).

`read_sparse` rebuilds the masked model: masks and effective weights (weight_orig * mask) bit for bit in
float32 (the stored pruned positions of weight_orig, which a mask hides, come back as 0).
"""
import json
import math
import os

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from utils.atomic_save import replace_with
from utils.errors import BridgeError, UnknownChoiceError
from utils.masks import has_mask, prunable_modules

SPARSE_FORMAT = "bridge-sparse-v1"
STORAGE = ("bitmask", "csr")
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _pack_bits(mask):
    return torch.from_numpy(np.packbits(mask.detach().cpu().flatten().numpy().astype(bool)))


def _unpack_bits(bits, numel, shape):
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(np.float32)).reshape(shape)


def sparse_tensors(model, storage="bitmask", value_dtype="float32"):
    """({tensor name: tensor} the file stores, {header metadata}) for a masked model (see module docstring)."""
    if storage not in STORAGE:
        raise UnknownChoiceError("storage", storage, STORAGE)
    if value_dtype not in VALUE_DTYPES:
        raise UnknownChoiceError("value dtype", value_dtype, VALUE_DTYPES)
    dtype = VALUE_DTYPES[value_dtype]
    tensors, shapes, counters = {}, {}, {}
    weights = set()
    for name, m in prunable_modules(model):
        weights.add(f"{name}.weight")
        mask = m.weight_mask if has_mask(m) else torch.ones_like(m.weight)
        w = (m.weight_orig * m.weight_mask if has_mask(m) else m.weight).detach().cpu()
        rows = w.reshape(w.shape[0], -1)
        alive = mask.detach().cpu().reshape(rows.shape) > 0
        shapes[f"{name}.weight"] = list(w.shape)
        tensors[f"{name}.weight.values"] = rows[alive].to(dtype).contiguous()
        if storage == "bitmask":
            tensors[f"{name}.weight.bitmask"] = _pack_bits(alive)
        else:
            tensors[f"{name}.weight.col_idx"] = alive.nonzero()[:, 1].to(torch.int32).contiguous()
            tensors[f"{name}.weight.row_ptr"] = torch.cat([torch.zeros(1, dtype=torch.int64),
                                                           alive.sum(1).cumsum(0)]).to(torch.int32)
    state = model.state_dict()
    for key, value in state.items():
        base = key[: -len("_orig")] if key.endswith("_orig") else key
        if base in weights or key.endswith("_mask"):
            continue
        if key.endswith("num_batches_tracked"):
            counters[key] = int(value)
            continue
        if key.endswith("_orig"):  # another masked parameter: its effective value, its mask as bits
            tensors[base] = (value * state[base + "_mask"]).detach().cpu().to(dtype).contiguous()
            tensors[base + ".mask_bits"] = _pack_bits(state[base + "_mask"] > 0)
            shapes[base] = list(value.shape)
        else:
            tensors[base] = value.detach().cpu().to(dtype).contiguous()
    meta = {"shapes": shapes, "batch_counters": counters}
    return tensors, meta


def write_sparse(path, model, m_name, granularity, storage="bitmask", value_dtype="float32", dataset=None):
    """Write the sparse file of a masked model (granularity: utils.granularity's name, "weights" or "filters",
    so that the reader rebuilds the same masks; dataset: what a torchvision model's class count comes from);
    returns (tensor bytes, header bytes)."""
    tensors, meta = sparse_tensors(model, storage, value_dtype)
    header = {"format": SPARSE_FORMAT, "model": m_name, "dataset": dataset or "", "granularity": granularity,
              "storage": storage,
              "value_dtype": value_dtype, "layout": json.dumps(meta, sort_keys=True)}
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=header)
    replace_with(tmp, path)  # atomic: a reader never sees half a file
    return sum(t.numel() * t.element_size() for t in tensors.values()), header_bytes(path)


def header_bytes(path):
    """The safetensors header of a file: 8 bytes of length and the JSON they count."""
    with open(path, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def read_header(path):
    """The header metadata of a sparse file (a clear error for any other file)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a file that is not one of its files
        raise BridgeError(f"{path} is not a sparse weight file ({exc})") from None
    if meta.get("format") != SPARSE_FORMAT:
        raise BridgeError(f"{path} is not a {SPARSE_FORMAT} file (format {meta.get('format')!r})")
    return meta


def read_sparse(path, model):
    """Load a sparse file into `model`: a model of the recorded name with the recorded granularity's masks
    (see read_header)."""
    meta = read_header(path)
    layout = json.loads(meta["layout"])
    shapes, storage = layout["shapes"], meta["storage"]
    tensors = load_file(str(path))
    state = {}
    for key, shape in shapes.items():
        if f"{key}.values" not in tensors:
            continue
        numel = math.prod(shape)
        rows = shape[0]
        if storage == "bitmask":
            mask = _unpack_bits(tensors[f"{key}.bitmask"], numel, shape)
        else:
            ptr, cols = tensors[f"{key}.row_ptr"].long(), tensors[f"{key}.col_idx"].long()
            row_of = torch.repeat_interleave(torch.arange(rows), ptr[1:] - ptr[:-1])
            mask = torch.zeros(rows, numel // rows)
            mask[row_of, cols] = 1.0
            mask = mask.reshape(shape)
        weight = torch.zeros(numel)
        weight[mask.flatten() > 0] = tensors[f"{key}.values"].float()
        state[key] = (weight.reshape(shape), mask)
    for key, value in tensors.items():
        if key.endswith((".values", ".bitmask", ".col_idx", ".row_ptr", ".mask_bits")):
            continue
        if f"{key}.mask_bits" in tensors:
            state[key] = (value.float(), _unpack_bits(tensors[f"{key}.mask_bits"], value.numel(), value.shape))
        else:
            state[key] = (value.float(), None)
    own = model.state_dict()
    out = {}
    for key, (value, mask) in state.items():
        if key + "_orig" in own:
            out[key + "_orig"] = value.to(own[key + "_orig"].dtype)
            out[key + "_mask"] = (mask if mask is not None else torch.ones_like(value)).to(own[key + "_mask"].dtype)
        elif key in own:
            out[key] = value.to(own[key].dtype)
        else:
            raise BridgeError(f"{path}: tensor {key} has no place in the model")
    for key, count in layout["batch_counters"].items():
        out[key] = torch.tensor(count, dtype=torch.long)
    missing = set(own) - set(out)
    if missing:
        raise BridgeError(f"{path}: the file lacks {len(missing)} tensor(s) of the model, e.g. {sorted(missing)[0]}")
    model.load_state_dict(out)
    return model
