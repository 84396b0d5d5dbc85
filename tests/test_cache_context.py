"""The saliency / SSIM cache key follows where and how the pass ran: device type, precision, TF32."""
from types import SimpleNamespace

import pytest
import torch

from utils.regrowth import kinds as regrowth_kinds
from utils.cache import DiskCache, cache_key, compute_context
from utils.runtime import Precision


def _key(device="cpu", precision=Precision()):
    return cache_key("saliency", dense="abc", layers=["conv1"], batches=2, context=compute_context(device, precision))


def test_same_inputs_same_key():
    assert _key() == _key()
    assert _key("cuda", Precision(torch.bfloat16, True)) == _key("cuda", Precision(torch.bfloat16, True))
    assert compute_context("cpu") == compute_context(torch.device("cpu"), Precision())


def test_device_type_changes_the_key():
    assert _key("cpu") != _key("cuda")
    assert compute_context("cuda:0")["device"] == compute_context("cuda")["device"] == "cuda"


def test_precision_changes_the_key():
    assert _key("cpu", Precision()) != _key("cpu", Precision(torch.bfloat16))
    assert _key("cuda", Precision()) != _key("cuda", Precision(torch.bfloat16))
    assert _key("cpu", Precision()) != _key("cpu", Precision(None, channels_last=True))
    assert compute_context("cpu", Precision(torch.bfloat16))["dtype"] == "bfloat16"
    assert compute_context("cpu", None)["dtype"] == "float32"


_FP32_SETTINGS = [("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"), ("mkldnn", "matmul"), ("mkldnn", "conv")]


@pytest.fixture
def restore_backend_flags():
    """Put every fp32 precision setting back as it was (these modules route attributes through
    __setattr__, so monkeypatch cannot)."""
    raw = {(b, op): getattr(getattr(getattr(torch.backends, b), op), "fp32_precision") for b, op in _FP32_SETTINGS}
    matmul = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(matmul)
    for (b, op), value in raw.items():
        setattr(getattr(getattr(torch.backends, b), op), "fp32_precision", value)


def test_tf32_changes_the_cuda_key(restore_backend_flags):
    before = _key("cuda")
    for obj in (torch.backends.cuda.matmul, torch.backends.cudnn):  # the legacy flags
        old = obj.allow_tf32
        obj.allow_tf32 = not old
        assert _key("cuda") != before
        obj.allow_tf32 = old
        assert _key("cuda") == before  # set back: the same key again
    torch.backends.cudnn.conv.fp32_precision = "ieee"  # the new settings
    assert _key("cuda") != before
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert _key("cuda") == before
    torch.set_float32_matmul_precision("high")  # TF32 matmuls
    assert _key("cuda") != before
    assert compute_context("cuda")["fp32_runs_as"]["matmul"] == "tf32"


def test_reduced_fp32_precision_changes_the_cpu_key(restore_backend_flags):
    before = _key("cpu")
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    assert _key("cpu") != before
    assert compute_context("cpu")["fp32_runs_as"]["matmul"] == "bf16"
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"
    assert _key("cpu") == before
    torch.set_float32_matmul_precision("medium")
    assert _key("cpu") != before
    torch.set_float32_matmul_precision("highest")
    assert _key("cpu") == before


def test_regrowth_cache_recomputes_for_another_device_or_precision(tmp_path):
    calls = []

    def setup(device, channels_last=True):
        return SimpleNamespace(cache=DiskCache(str(tmp_path)), dense_digest="d", device=torch.device(device),
                               precision=Precision(torch.bfloat16, channels_last),
                               hp=SimpleNamespace(search=SimpleNamespace(saliency_batches=2)), data_key=lambda: {"dataset": "digits"})

    def compute():
        calls.append(1)
        return {"conv1": torch.arange(3.0)}

    regrowth_kinds._cached(setup("cpu"), "saliency", ["conv1"], compute)
    regrowth_kinds._cached(setup("cpu"), "saliency", ["conv1"], compute)
    assert len(calls) == 1  # same device and precision: reused
    regrowth_kinds._cached(setup("cuda"), "saliency", ["conv1"], compute)
    assert len(calls) == 2  # made on the CPU, not reused on CUDA
    regrowth_kinds._cached(setup("cpu", channels_last=False), "saliency", ["conv1"], compute)
    assert len(calls) == 3
