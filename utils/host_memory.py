"""Host memory: glibc's malloc told to keep freed blocks, so CPU training steps stop re-mapping their buffers."""
import os

import torch

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED_BYTES = 256 << 20
_freed_memory_kept = None  # None: not tried yet in this process; else whether the setting applied


def keep_freed_host_memory(device="cpu"):
    """Let glibc's malloc keep freed blocks of up to 256 MiB in the process instead of returning them.

    By default glibc serves large blocks with mmap and hands freed ones back to the kernel (munmap,
    heap trimming), so every CPU training step maps its activation buffers afresh and touches them
    page by page: 2,000-7,000 page faults per resnet20/CIFAR step on the 2-core CPU this was measured
    on, and a 16-channel convolution took 1.5 ms instead of 0.5 ms because its output buffer was new.
    Keeping the blocks (what a preloaded jemalloc or tcmalloc would also do, without the dependency)
    made compiled steps 3-9 % faster (README, Speed); the cost is that the process's resident memory
    stays at its peak. Process-wide and idempotent; a no-op for a non-CPU `device` (its tensors are not
    host memory), outside glibc, and when BRIDGE_KEEP_FREED_MEMORY=0. Returns whether the setting is in force.
    """
    global _freed_memory_kept
    if _freed_memory_kept is not None or torch.device(device).type != "cpu":
        return bool(_freed_memory_kept)
    _freed_memory_kept = False
    if os.environ.get("BRIDGE_KEEP_FREED_MEMORY", "1").lower() in ("0", "false", "off", "no"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to tune
        return False
    # Setting either threshold also stops glibc from adapting them on its own.
    _freed_memory_kept = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES)
                              and mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES))
    return _freed_memory_kept
