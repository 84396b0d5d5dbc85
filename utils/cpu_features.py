"""What this CPU offers that decides which kernels and precision paths are fast here.

The bf16 paths (utils.runtime.resolve_precision) pay off on CPUs with AVX-512 or native bf16 dot
products (avx512_bf16, amx_bf16); without them oneDNN emulates bf16 and fp32 is faster. Benchmarks
print `cpu_features().describe()` so that a number can be read against the machine it came from.
"""
import os
import platform
from dataclasses import dataclass, field

import torch

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    flags: dict = field(default_factory=dict)  # flag -> True / False, or None where it cannot be told
    threads: int = 1                          # torch's intra-op threads
    cores: int = 1                            # CPUs this process may run on
    source: str = ""                          # where the flags came from

    @property
    def fast_bf16(self):
        """Native bf16 dot products or AVX-512, where oneDNN's bf16 kernels beat fp32 (else bf16 is emulated)."""
        return any(self.flags.get(f) for f in ("avx512_bf16", "amx_bf16", "avx512f"))

    def describe(self):
        def mark(v):
            return "?" if v is None else ("yes" if v else "no")

        flags = ", ".join(f"{f} {mark(self.flags.get(f))}" for f in FLAGS)
        return f"{self.model} | {flags} ({self.source}) | torch threads {self.threads} of {self.cores} CPUs"


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _from_cpuinfo(text):
    """(model name, set of flags) of the first processor in a /proc/cpuinfo text (x86 'flags', ARM 'Features')."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "hardware"):
            model = value.strip()
        elif flags is None and key in ("flags", "features"):
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


def _from_torch():
    """Flags as far as torch's dispatch ISA tells them (no /proc/cpuinfo: macOS, Windows)."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return {f: False for f in FLAGS}, f"{platform.machine()}: no x86 vector extensions"
    has512 = capability.startswith("AVX512")
    flags = {"avx2": True if capability.startswith(("AVX2", "AVX512")) else None,
             "avx512f": True if has512 else None, "avx512_bf16": None, "amx_bf16": None}
    return flags, f"torch CPU capability {capability or 'unknown'}"


def cpu_features(cpuinfo="/proc/cpuinfo"):
    """CpuFeatures of this machine: from /proc/cpuinfo on Linux, else from platform + torch's CPU capability."""
    try:
        with open(cpuinfo) as fh:
            model, flags = _from_cpuinfo(fh.read())
    except OSError:
        model, flags = None, None
    if flags is not None:
        found, source = {f: f in flags for f in FLAGS}, cpuinfo
    else:
        found, source = _from_torch()
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return CpuFeatures(model, found, torch.get_num_threads(), _cores(), source)
