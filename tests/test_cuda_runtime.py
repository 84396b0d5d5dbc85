"""CUDA runtime choices, checked on a CPU: backend flags, precision per GPU generation, RNG restore
and device choice under torchrun, with torch.cuda's queries monkeypatched where a GPU is assumed."""
import argparse
import os

import pytest
import torch

from utils import cli, runtime


@pytest.fixture
def backend_flags(monkeypatch):
    """Restore the process-wide flags a test changes (and CUBLAS_WORKSPACE_CONFIG, through monkeypatch)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    cudnn.benchmark, cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


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
    monkeypatch.setattr("utils.distributed.init", lambda device: calls.append(("init", device)))
    parser = argparse.ArgumentParser()
    cli.add_runtime_args(parser)
    cli.run(lambda args: calls.append("main"), parser, ["--deterministic", "--device", "cpu"])
    assert calls == [("backends", True), ("init", "cpu"), "main"]
    calls.clear()
    cli.run(lambda args: calls.append("main"), parser, [])
    assert calls[0] == ("backends", False)
