"""Atomic writes: a file is either the old one or the complete new one, never half written (a kill mid-save
leaves the previous checkpoint). Imports nothing of the project but its errors, so data and caches can use it."""
import os
import tempfile

import torch

from utils.errors import CheckpointError


def replace_with(tmp, path):
    """Rename the finished temporary file `tmp` over `path`, with the permissions a plain open() would have
    given it: mkstemp and safetensors create files readable by their owner only (0600), which a collaborator
    on a shared machine cannot read."""
    mask = os.umask(0)  # reading the umask means setting it; put back at once
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


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
        replace_with(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
