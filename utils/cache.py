"""On-disk cache for per-checkpoint computations (saliency, SSIM).

A result is stored under a key made from what determines it: the content of the checkpoints or
model states it was computed from (SHA-256 of their tensors) and the arguments that change it (layers,
batches, data set, seed...). Rerunning a search on the same checkpoints reuses the saliency pass and
the SSIM maps; changing any input changes the key. Where and how a pass ran is an input too
(`compute_context`: device type and model, autocast dtype, memory layout, TF32 / reduced-precision fp32
settings), so a result computed on the CPU, in bf16 or with TF32 is never reused for another setting.
Files are weights_only dicts written atomically.
"""
import hashlib
import json
import os

import torch

from utils.atomic_save import atomic_torch_save
from utils.progress import log


def default_cache_dir():
    """$BRIDGE_CACHE_DIR (empty disables caching) or .cache/bridge: the default of every --cache_dir."""
    return os.environ.get("BRIDGE_CACHE_DIR", os.path.join(".cache", "bridge"))


def state_digest(state_dict):
    """SHA-256 over the names, shapes, dtypes and bytes of a state_dict's tensors (layout-independent)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k]
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach().to("cpu").contiguous().reshape(-1)
        h.update(k.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _backend_setting(path):
    """torch.backends.<path> (e.g. 'cudnn.conv.fp32_precision'), None where this torch lacks it or refuses
    to answer (a legacy allow_tf32 read after the new API set conv and RNN apart raises)."""
    obj = torch.backends
    for part in path.split("."):
        try:
            obj = getattr(obj, part)
        except (AttributeError, RuntimeError):
            return None
    return obj if isinstance(obj, (bool, str)) else None


def _fp32_precision(levels, legacy=None):
    """The fp32 precision ('ieee', 'tf32', 'bf16') an op really runs in: the first of `levels` (op, backend,
    generic fp32_precision) that is set ('none' inherits from the next), else the legacy allow_tf32 flag
    on a torch without the new settings; 'ieee' when nothing is set. Effective values, so that setting a
    flag and setting it back gives the same key."""
    values = [_backend_setting(p) for p in levels]
    for v in values:
        if v not in (None, "none"):
            return v
    if all(v is None for v in values) and legacy:
        flag = _backend_setting(legacy)
        return None if flag is None else ("tf32" if flag else "ieee")
    return "ieee"


def _float32_matmul_precision():
    """torch.get_float32_matmul_precision(), None where it refuses (the legacy and new settings were mixed;
    the fp32_precision values the key also holds then say what runs)."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        return None


def compute_context(device, precision=None):
    """What about where and how a forward / backward pass runs can change its result's bits.

    device type ('cpu', 'cuda'), the CUDA device's name or the CPU's vector ISA (oneDNN picks other
    kernels per ISA), the autocast dtype of `precision` (a utils.runtime.Precision; None = fp32) and its
    memory layout, torch's float32 matmul precision, and the precision fp32 matmuls and convolutions
    really run in on that device: TF32 allowed or not on CUDA (cuBLAS, cuDNN), bf16 / TF32 in oneDNN on the CPU.
    """
    device = torch.device(device)
    dtype = getattr(precision, "dtype", None)
    ctx = {
        "device": device.type,
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "channels_last": bool(getattr(precision, "channels_last", False)),
        "float32_matmul_precision": _float32_matmul_precision(),
    }
    if device.type == "cuda":
        ctx["device_name"] = torch.cuda.get_device_name(device) if torch.cuda.is_available() else None
        ctx["fp32_runs_as"] = {
            "matmul": _fp32_precision(["cuda.matmul.fp32_precision", "fp32_precision"], "cuda.matmul.allow_tf32"),
            "conv": _fp32_precision(["cudnn.conv.fp32_precision", "cudnn.fp32_precision", "fp32_precision"],
                                    "cudnn.allow_tf32")}
    elif device.type == "cpu":
        capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
        ctx["cpu_capability"] = capability() if capability else None
        ctx["fp32_runs_as"] = {
            "matmul": _fp32_precision(["mkldnn.matmul.fp32_precision", "mkldnn.fp32_precision", "fp32_precision"]),
            "conv": _fp32_precision(["mkldnn.conv.fp32_precision", "mkldnn.fp32_precision", "fp32_precision"])}
    return ctx


def cache_key(kind, **parts):
    blob = json.dumps({"kind": kind, **parts}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


class DiskCache:
    """get-or-compute of weights_only-serialisable objects under a folder (disabled when folder is None)."""

    def __init__(self, folder):
        self.folder = folder

    def path(self, key):
        return os.path.join(self.folder, key + ".pth")

    def get_or_compute(self, key, compute, what="result"):
        if self.folder:
            path = self.path(key)
            if os.path.isfile(path):
                try:
                    value = torch.load(path, map_location="cpu", weights_only=True)
                    log(f"cache: reused {what} from {path}")
                    return value
                except Exception:  # a damaged cache file is recomputed
                    pass
        value = compute()
        if self.folder:
            atomic_torch_save(value, self.path(key))
        return value
