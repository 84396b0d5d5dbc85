"""scripts/count_host_syncs.py: counts only sync warnings, restores the debug mode, runs as a CPU dry run."""
import warnings

import pytest
import torch

from tests.conftest import load_script


@pytest.fixture(scope="module")
def counter():
    return load_script("scripts/count_host_syncs.py")


def test_counts_sync_warnings_only_and_restores_the_mode(counter, monkeypatch):
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def steps():
        warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("something else entirely")
        warnings.warn("called a synchronizing CUDA operation")
        return "done"

    result, syncs = counter.count_sync_warnings(steps)
    assert result == "done" and len(syncs) == 2
    assert all(where.startswith("tests") and msg.startswith("called a synchronizing") for where, msg in syncs)
    assert modes == ["warn", "default"]

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        counter.count_sync_warnings(fails)
    assert modes[-1] == "default"  # restored even when the steps raise


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answers")
def test_without_cuda_it_says_so(counter, capsys):
    args = counter.get_args_parser().parse_args([])
    assert counter.main(args) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().out
    args = counter.get_args_parser().parse_args(["--allow_cpu", "--steps", "1", "--batch_size", "16"])
    assert counter.main(args) == 0
    out = capsys.readouterr().out
    assert "needs CUDA to count host syncs; ran 1 CPU steps as a dry run" in out
