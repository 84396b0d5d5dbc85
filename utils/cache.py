"""On-disk cache for per-checkpoint computations (saliency, SSIM).

A result is stored under a key made from what determines it: the content of the checkpoints or
model states it was computed from (SHA-256 of their tensors) and the arguments that change it (layers,
batches, data set, seed...). Rerunning a search on the same checkpoints reuses the saliency pass and
the SSIM maps; changing any input changes the key. Files are weights_only dicts written atomically.
"""
import hashlib
import json
import os

import torch

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
        from utils.checkpoints import atomic_torch_save

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
