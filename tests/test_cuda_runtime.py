"""CUDA runtime choices, checked on a CPU: backend flags, precision per GPU generation, RNG restore
and device choice under torchrun, with torch.cuda's queries monkeypatched where a GPU is assumed."""
import argparse
import os

import pytest
import torch

from utils import cli, distributed, runtime
from utils.hparams import RuntimeHparams
from utils.errors import BridgeError


@pytest.fixture
def backend_flags(monkeypatch):
    """Restore the process-wide flags a test changes (and CUBLAS_WORKSPACE_CONFIG, through monkeypatch)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    b = torch.backends
    saved = (b.cudnn.benchmark, b.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    tf32 = (b.cudnn.allow_tf32, b.cudnn.fp32_precision, b.cudnn.conv.fp32_precision,
            b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision)
    yield
    b.cudnn.benchmark, b.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
    b.cudnn.allow_tf32 = tf32[0]  # the legacy flag first: setting it resets the per-op ones
    b.cudnn.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision = tf32[1:4]
    b.cuda.matmul.fp32_precision = tf32[4]


def test_default_backends_autotune_cudnn(backend_flags):
    runtime.configure_backends(deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_deterministic_backends(backend_flags):
    runtime.configure_backends(deterministic=True)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_run_sets_backends_from_the_flag_before_joining_the_process_group(backend_flags, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "configure_backends", lambda det: calls.append(("backends", det)))
    monkeypatch.setattr(distributed, "init", lambda device: calls.append(("init", device)))
    parser = argparse.ArgumentParser()
    RuntimeHparams.add_args(parser)
    cli.run(lambda args: calls.append("main"), parser, ["--deterministic", "--device", "cpu"])
    assert calls == [("backends", True), ("init", "cpu"), "main"]
    calls.clear()
    cli.run(lambda args: calls.append("main"), parser, [])
    assert calls[0] == ("backends", False)


def _assert_ieee_fp32():
    b = torch.backends
    assert b.cudnn.conv.fp32_precision == b.cudnn.rnn.fp32_precision == b.cuda.matmul.fp32_precision == "ieee"
    assert not b.cudnn.allow_tf32 and not b.cuda.matmul.allow_tf32  # the legacy getters agree and do not raise


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_resolving_a_precision_turns_tf32_off(backend_flags, name):
    torch.backends.cudnn.allow_tf32 = True  # torch's default: fp32 convolutions in TF32
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    runtime.resolve_precision(name, "cuda")
    _assert_ieee_fp32()  # also for bf16: its fp32 passes (saliency, SSIM) run outside autocast


def test_scripts_without_a_precision_run_ieee_fp32(backend_flags, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    runtime.configure_backends()
    _assert_ieee_fp32()


def test_cpu_runs_keep_the_tf32_defaults(backend_flags):
    torch.backends.cudnn.allow_tf32 = True
    runtime.configure_backends()
    runtime.resolve_precision("fp32", "cpu")
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # CUDA-only flags untouched in a CPU process


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp32+channels_last"), ((7, 5), "fp32+channels_last"),
                                                  ((8, 0), "bf16+channels_last"), ((9, 0), "bf16+channels_last")])
def test_auto_precision_picks_bf16_only_on_gpus_with_native_bf16(backend_flags, monkeypatch, capability, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # true on V100/T4 too (emulated)
    monkeypatch.delenv("BRIDGE_PRECISION", raising=False)
    assert runtime.resolve_precision("auto", "cuda:1", compile=False).name == expected
    assert asked == [torch.device("cuda", 1)]  # the capability of the run's GPU, not of the current one


def _fake_cuda(monkeypatch, count, restored):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append((device, int(s[0]))))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("would raise IndexError"))


def _state_with_gpus(n):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        state = runtime.rng_state()
    state["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(n)]  # GPU i's state starts with i
    return state


def test_resume_on_fewer_gpus_restores_those_present_and_warns_once(monkeypatch, recwarn):
    restored = []
    _fake_cuda(monkeypatch, 2, restored)
    runtime.set_rng_state(_state_with_gpus(4))
    assert restored == [(0, 0), (1, 1)]
    (w,) = [w for w in recwarn if "saved with 4 GPUs" in str(w.message)]
    assert "GPU(s) 2, 3 were not restored" in str(w.message)


def test_resume_on_as_many_or_more_gpus_restores_all_silently(monkeypatch, recwarn):
    restored = []
    _fake_cuda(monkeypatch, 3, restored)
    runtime.set_rng_state(_state_with_gpus(2))
    assert restored == [(0, 0), (1, 1)]
    assert not [w for w in recwarn if "GPUs" in str(w.message)]


@pytest.fixture
def torchrun_env(monkeypatch):
    """A fake torchrun process on a machine with `gpus` GPUs; returns the backend/set_device calls it makes."""
    calls = []

    def setup(world, local_world, local_rank, gpus):
        env = {"WORLD_SIZE": world, "LOCAL_WORLD_SIZE": local_world, "LOCAL_RANK": local_rank, "RANK": local_rank}
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
        monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(backend))
        return calls

    return setup


def test_nccl_across_nodes_counts_the_processes_of_this_node(torchrun_env):
    calls = torchrun_env(world=4, local_world=2, local_rank=1, gpus=2)  # 2 nodes x 2 GPUs
    assert distributed.init("auto") == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), "nccl"]


def test_more_processes_than_gpus_share_them_over_gloo(torchrun_env):
    calls = torchrun_env(world=2, local_world=2, local_rank=1, gpus=1)
    assert distributed.init("cuda") == torch.device("cuda", 0)
    assert calls == ["gloo"]
    calls.clear()
    assert distributed.init("cpu") == torch.device("cpu") and calls == ["gloo"]


def test_an_explicit_gpu_index_is_refused_under_torchrun(torchrun_env):
    calls = torchrun_env(world=2, local_world=2, local_rank=0, gpus=2)
    with pytest.raises(BridgeError, match="CUDA_VISIBLE_DEVICES"):
        distributed.init("cuda:1")
    with pytest.raises(BridgeError, match="CUDA_VISIBLE_DEVICES"):
        runtime.resolve_device("cuda:1")
    assert calls == []  # refused before joining a process group
    torchrun_env(world=1, local_world=1, local_rank=0, gpus=2)  # alone, cuda:N is that GPU
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
