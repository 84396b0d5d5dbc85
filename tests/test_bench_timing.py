"""The throughput bench's clocks wait for CUDA, and its machine header (CPU features, auto precision)."""
import ast
import os

import pytest
import torch

from tests.conftest import ROOT, load_script
from utils import cpu_features as cf
from utils.runtime import resolve_precision

BENCH = os.path.join(ROOT, "bench", "train_throughput.py")


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/train_throughput.py")


XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile avx512fp16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma avx512fp16x
"""


def test_cpu_features_from_cpuinfo(tmp_path):
    (tmp_path / "xeon").write_text(XEON)
    (tmp_path / "epyc").write_text(EPYC)
    xeon = cf.cpu_features(str(tmp_path / "xeon"))
    assert xeon.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert xeon.flags == {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": True}
    epyc = cf.cpu_features(str(tmp_path / "epyc"))
    assert epyc.flags == {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False}  # whole words
    assert epyc.threads == torch.get_num_threads() and epyc.cores >= 1
    assert "avx512f no" in epyc.describe() and "AMD EPYC 7B12" in epyc.describe()
    # --precision auto takes bf16 only where it runs natively: avx512fp16x is not avx512f
    assert xeon.fast_bf16 and not epyc.fast_bf16


def test_cpu_features_without_proc_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(cf.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cf.platform, "processor", lambda: "Some CPU")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    f = cf.cpu_features(str(tmp_path / "missing"))
    assert f.model == "Some CPU" and f.flags["avx2"] is True
    assert f.flags["avx512f"] is None and f.flags["amx_bf16"] is None  # cannot be told: '?' not 'no'
    assert "avx512f ?" in f.describe()
    monkeypatch.setattr(cf.platform, "machine", lambda: "arm64")
    assert not any(cf.cpu_features(str(tmp_path / "missing")).flags.values())


def test_only_clock_reads_the_time(bench):
    """Every timed section goes through clock(), which synchronises CUDA before reading the time."""
    tree = ast.parse(open(BENCH).read())
    readers = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and node.attr in ("perf_counter", "time", "monotonic"):
                    readers.add(fn.name)
    assert readers == {"clock"}


class _Moves:
    """A batch whose .to(device) hands back the CPU tensor (a CUDA device cannot be built here)."""

    def __init__(self, t):
        self.t = t

    def to(self, device):
        return self.t


def test_plain_loop_synchronises_before_each_clock_read_on_cuda(bench, monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    real = bench.time.perf_counter
    monkeypatch.setattr(bench.time, "perf_counter", lambda: events.append("clock") or real())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(_Moves(torch.randn(4, 3, 2, 2)), _Moves(torch.randint(0, 3, (4,)))) for _ in range(3)]
    secs, n = bench.plain_loop(model, batches, opt, torch.device("cuda"))
    assert n == 12 and secs >= 0
    assert events == [("sync", "cuda"), "clock", ("sync", "cuda"), "clock"]
    events.clear()
    bench.plain_loop(model, [(b[0].t, b[1].t) for b in batches], opt, torch.device("cpu"))
    assert events == ["clock", "clock"]  # nothing to wait for on the CPU


def test_machine_header_reports_cpu_and_the_auto_path(bench, capsys):
    bench.print_machine(torch.device("cpu"))
    out = capsys.readouterr().out
    assert out.startswith("cpu: ") and "avx2" in out and "amx_bf16" in out and "torch threads" in out
    assert f"--precision auto on cpu: {resolve_precision('auto', 'cpu', compile=False).name} " in out
