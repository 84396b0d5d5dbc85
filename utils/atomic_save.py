"""Atomic writes: a file is either the old one or the complete new one, never half written (a kill mid-save
leaves the previous checkpoint). Imports nothing of the project but its errors, so data and caches can use it."""
import os
import tempfile

import torch

from utils.errors import CheckpointError


def atomic_torch_save(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    Under torchrun only the main process writes (the others return the path untouched).
    """
    path = os.fspath(path)
    if os.environ.get("RANK", "0") != "0":
        return path
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    except OSError as exc:
        raise CheckpointError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
