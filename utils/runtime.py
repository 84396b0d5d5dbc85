"""Device, seeding and numeric-precision choices shared by all stages (host memory: utils/host_memory.py).

The fastest correct training path differs per device: bf16 autocast with channels_last memory
layout is about 2x faster than fp32 for CIFAR CNNs on both a modern x86 CPU and a CUDA GPU, so
`--precision auto` picks it wherever the hardware runs bf16 natively. `bench/` measures the ratio.
"""
import contextlib
import os
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from utils.cpu_features import cpu_features
from utils.errors import BridgeError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "fp32", "bf16")


def resolve_device(name="auto"):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a user error.

    Under torchrun 'auto' and 'cuda' mean GPU LOCAL_RANK (modulo the GPUs present); 'cuda:N' is refused there.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))  # under torchrun: this process's GPU
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    if name not in DEVICE_CHOICES and not str(name).startswith("cuda:"):
        raise BridgeError(f"unknown device {name!r}; valid: {', '.join(DEVICE_CHOICES)}")
    # Under torchrun one index would put every process on the same GPU; CUDA_VISIBLE_DEVICES is the
    # standard way to pick a job's GPUs, and an offset meaning for cuda:N would surprise.
    if str(name).startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BridgeError(f"--device {name} under torchrun would put every process on that one GPU; use --device "
                          "cuda (process r takes GPU LOCAL_RANK) and CUDA_VISIBLE_DEVICES to choose the GPUs")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise BridgeError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    if name == "cuda":
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device(name)


def configure_backends(deterministic=False):
    """Process-wide kernel choices, for CUDA above all; cli.run calls it before CUDA starts.

    Default: cuDNN benchmarks the convolution algorithms per input shape and keeps the fastest (faster
    steps; the choice, and so the last bits of results, can differ between runs). deterministic=True:
    only deterministic kernels (an op without one raises), so a rerun or a resumed run on the same
    hardware repeats the same numbers; cuBLAS needs CUBLAS_WORKSPACE_CONFIG for that, read when it starts.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic or torch.are_deterministic_algorithms_enabled():
        # the call imports torch._inductor (1.7 s a process here); off is torch's default, so skip it then
        torch.use_deterministic_algorithms(deterministic)
    if torch.cuda.is_available():
        use_ieee_fp32()  # scripts that never resolve a precision (fp32 only) run IEEE fp32 too


def use_ieee_fp32():
    """fp32 means IEEE fp32 on CUDA too: cuDNN runs fp32 convolutions in TF32 (10-bit mantissa) by default.

    Process-wide, so the fp32 passes of a bf16 run (saliency, SSIM) get it as well; autocast's bf16 ops
    are unaffected. Callers set it only for CUDA runs: a CPU process keeps torch's defaults.
    """
    # The legacy flag first: its getter (still read by inductor's conv templates) raises if it disagrees.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.fp32_precision = "ieee"  # convolutions and RNNs
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def set_seed(seed):
    """Seed every RNG the pipeline touches (Python, NumPy, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state():
    """All RNG states as weights_only-loadable objects, so a resumed run continues the same streams."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore the states rng_state() saved."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # A run saved on more GPUs than this machine has: restore the GPUs that exist and drop the
        # other states (set_rng_state_all would raise IndexError).
        saved, present = state["cuda"], torch.cuda.device_count()
        for i, s in enumerate(saved[:present]):
            torch.cuda.set_rng_state(s, device=i)
        if len(saved) > present:
            missing = ", ".join(map(str, range(present, len(saved))))
            warnings.warn(f"the run was saved with {len(saved)} GPUs, this machine has {present}: the random "
                          f"streams of GPU(s) {missing} were not restored, so the resumed run may differ from "
                          "an uninterrupted one", stacklevel=2)


def cpu_supports_bf16():
    """True when this CPU has native bf16 dot products or AVX-512 (where oneDNN's bf16 kernels win)."""
    return cpu_features().fast_bf16


@dataclass(frozen=True)
class Precision:
    """How a model runs: autocast dtype (None = fp32) and memory layout."""

    dtype: object = None
    channels_last: bool = False
    compile: bool = False  # training steps run a torch.compile'd twin of the model (utils.training)

    @property
    def name(self):
        return (("bf16" if self.dtype is torch.bfloat16 else "fp32") + ("+channels_last" if self.channels_last else "")
                + ("+compile" if self.compile else ""))

    def autocast(self, device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)


def resolve_precision(name, device, compile=None):
    """'auto' -> bf16 + channels_last on GPUs with native bf16 (compute capability >= 8.0) and on CPUs
    with AVX-512/bf16; else fp32 + channels_last.

    channels_last is kept with fp32 too: it never changed results and is faster for convolutions
    on both devices. fp32 is IEEE fp32 on CUDA (no TF32), here and in every other fp32 pass of the
    process. `compile` (None: the BRIDGE_COMPILE environment variable, off when unset) makes training
    steps run through torch.compile: faster steps for a one-time compile per process
    (bench/train_throughput.py measures both), so it pays off for runs longer than a few minutes.
    """
    if compile is None:
        compile = os.environ.get("BRIDGE_COMPILE", "").lower() in ("1", "true", "on", "yes")
    device = torch.device(device)
    env = os.environ.get("BRIDGE_PRECISION")
    if name in (None, "auto") and env:
        name = env
    if name not in PRECISION_CHOICES:
        raise BridgeError(f"unknown precision {name!r}; valid: {', '.join(PRECISION_CHOICES)}")
    if device.type == "cuda":
        use_ieee_fp32()
    if name == "auto":
        if device.type == "cuda":
            # is_bf16_supported() is also true where bf16 is only emulated (V100, T4: slower than fp32);
            # native bf16 tensor cores start with compute capability 8.0 (Ampere).
            name = "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp32"
        else:
            name = "bf16" if cpu_supports_bf16() else "fp32"
    return Precision(dtype=torch.bfloat16 if name == "bf16" else None, channels_last=True, compile=bool(compile))


def to_device(model, device, precision):
    """Move a model to the device and the memory layout the precision asks for."""
    model = model.to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
