"""Export: the sparse weight file reads back into the same masked model and is as large as the boundary module
counts (plus its header); ONNX of every kind of checkpoint matches PyTorch under onnxruntime; bad input is one
line with exit status 2."""
import os

import pytest
import torch

import export
from models import model_loader
from tests.conftest import run_script
from utils.boundary import storage_bytes
from utils.checkpoints import save_checkpoint
from utils.compact import export_compact, save_compact
from utils.export import load_sparse_model
from utils.granularity import FILTERS, WEIGHTS
from utils.masks import unmasked_state_dict
from utils.pruners import weight_pruner_loader
from utils.sparse_file import header_bytes, read_header, read_sparse, write_sparse
from utils.structured_importance import prune_channels


def _masked(granularity, seed=0):
    torch.manual_seed(seed)
    model = granularity.add_masks(model_loader("resnet20"))
    if granularity is WEIGHTS:
        weight_pruner_loader("glob")(model, 0.9)
    else:
        prune_channels(model, 32, 0.5, "l1")
    with torch.no_grad():  # statistics and stale values behind the masks that a real run would have
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_()
        for name, p in model.named_parameters():
            if name.endswith("_orig"):
                p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


@pytest.mark.parametrize("granularity", [WEIGHTS, FILTERS], ids=lambda g: g.name)
@pytest.mark.parametrize("storage", ["bitmask", "csr"])
@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
def test_sparse_file_reads_back_and_has_the_counted_size(tmp_path, granularity, storage, value_dtype):
    model = _masked(granularity)
    path = str(tmp_path / "m.safetensors")
    payload, header = write_sparse(path, model, "resnet20", granularity.name, storage, value_dtype)
    value_bytes = 4 if value_dtype == "float32" else 2
    assert payload == storage_bytes(model, storage, value_bytes)
    assert os.path.getsize(path) == payload + header == payload + header_bytes(path)
    assert read_header(path)["granularity"] == granularity.name
    back = read_sparse(path, granularity.add_masks(model_loader("resnet20"))).eval()
    assert torch.equal(load_sparse_model(path).state_dict()["conv1.weight_mask"], back.state_dict()["conv1.weight_mask"])
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        if k.endswith("_mask"):
            assert torch.equal(a[k], b[k]), k
    ua, ub = unmasked_state_dict(a), unmasked_state_dict(b)
    for k in ua:  # effective weights: exact in float32, float16-rounded otherwise
        want = ua[k] if value_dtype == "float32" or not ua[k].is_floating_point() else ua[k].half().float()
        assert torch.equal(want, ub[k]), k
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (model(x) - back(x)).abs().max()
    assert diff == 0 if value_dtype == "float32" else diff < 0.05


def test_sparse_bytes_by_hand():
    """A 4x6 Linear with 5 alive weights and a bias: bitmask 5*4 + ceil(24/8), csr 5*(4+4) + 5*4, bias 4*4."""
    lin = torch.nn.Sequential(torch.nn.Linear(6, 4))
    WEIGHTS.add_masks(lin)
    with torch.no_grad():
        lin[0].weight_mask.zero_()
        lin[0].weight_mask.view(-1)[[0, 3, 7, 8, 23]] = 1
    assert storage_bytes(lin, "bitmask", 4) == 5 * 4 + 3 + 4 * 4
    assert storage_bytes(lin, "csr", 4) == 5 * 8 + 5 * 4 + 4 * 4
    assert storage_bytes(lin, "bitmask", 2) == 5 * 2 + 3 + 4 * 2


def _checkpoints(tmp_path):
    unstructured, structured = _masked(WEIGHTS), _masked(FILTERS)
    paths = {"weights": str(tmp_path / "w.pth"), "filters": str(tmp_path / "f.pth"),
             "compact": str(tmp_path / "f_compact.pth")}
    save_checkpoint(paths["weights"], unstructured, "resnet20", "CIFAR10", "prune_oneshot")
    save_checkpoint(paths["filters"], structured, "resnet20", "CIFAR10", "prune_structured_oneshot")
    save_compact(paths["compact"], export_compact(structured, 32), "resnet20", structured, 32)
    return paths


def test_onnx_of_every_kind_of_checkpoint_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    paths = _checkpoints(tmp_path)
    sizes = {}
    for kind, path in paths.items():
        res = export.main(export.get_args_parser().parse_args(["--model_path", path, "--out", str(tmp_path / "o")]))
        assert res["max_abs_diff"] < 1e-4 and os.path.isfile(res["path"]), kind
        sizes[kind] = res["bytes"]
    assert sizes["compact"] == pytest.approx(sizes["filters"], rel=0.01)  # the same compact graph
    assert sizes["compact"] < sizes["weights"]  # filters removed; a weight-pruned graph keeps its shapes


def test_export_cli_sparse_and_bad_input(tmp_path):
    paths = _checkpoints(tmp_path)
    proc = run_script("export.py", ["--model_path", paths["filters"], "--format", "sparse", "--storage", "csr",
                                    "--out", tmp_path / "o"])
    assert "bit for bit equal" in proc.stdout and "bytes of header" in proc.stdout
    assert os.path.isfile(tmp_path / "o" / "f_csr_float32.safetensors")
    bad = [(["--model_path", paths["weights"], "--format", "tflite"], "unknown export format"),
           (["--model_path", paths["weights"], "--format", "sparse", "--storage", "coo"], "unknown storage"),
           (["--model_path", paths["weights"], "--format", "sparse", "--value_dtype", "int4"], "unknown value dtype"),
           (["--model_path", paths["compact"], "--format", "sparse"], "no pruned weights left"),
           (["--model_path", str(tmp_path / "missing.pth")], "not found"),
           (["--model_path", paths["weights"], "--out", "/proc/forbidden"], "cannot write")]
    nameless, unknown = str(tmp_path / "nameless.pth"), str(tmp_path / "unknown.pth")
    torch.save({"state_dict": model_loader("resnet20").state_dict()}, nameless)
    save_checkpoint(unknown, _masked(WEIGHTS), "resnet99", "CIFAR10", "prune_oneshot")
    bad += [(["--model_path", nameless], "not a checkpoint this project understands"),
            (["--model_path", unknown], "unknown model 'resnet99'")]
    for argv, message in bad:
        proc = run_script("export.py", argv, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_missing_onnxruntime_is_one_line(tmp_path, monkeypatch, capsys):
    import sys

    paths = _checkpoints(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    from utils import cli

    with pytest.raises(SystemExit) as exit_:
        cli.run(export.main, export.get_args_parser(), ["--model_path", paths["weights"], "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "pip install onnxruntime" in capsys.readouterr().err


def test_latency_is_measured_with_the_benchmark_timer_for_both_backends(tmp_path):
    pytest.importorskip("onnxruntime")
    from utils.compact import torch_latency
    from utils.export import export_onnx, onnx_latency

    model = export_compact(_masked(FILTERS), 32)
    t = torch_latency(model, 32, 2, threads=1, min_run_time=0.05)
    o = onnx_latency(export_onnx(model, 32, str(tmp_path / "c.onnx")), 32, 2, threads=1, min_run_time=0.05)
    for lat in (t, o):
        assert lat.median_ms > 0 and lat.iqr_ms >= 0 and lat.threads == 1 and lat.blocks >= 1
        assert "ms (IQR" in str(lat)


@pytest.mark.slow
def test_structured_latency_bench_prints_every_backend():
    pytest.importorskip("onnxruntime")
    proc = run_script("bench/structured_latency.py", ["--models", "resnet20", "--sparsities", "0.5", "--batches", "1",
                                                      "--min_run_time", "0.05", "--threads", "1"])
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("resnet20")]
    assert len(rows) == 2 and rows[1][-2].endswith("x") and rows[1][-1].endswith("x")  # compact and ort speed-ups


@pytest.mark.slow
def test_latency_limit_with_either_backend(tmp_path):
    """find_drop_point.py --max_latency_ms times each filter-pruned level's compact model with the chosen
    backend; a generous limit fits every level, a tiny one none."""
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "curve"
    folder.mkdir()
    for amount, acc in ((0.3, 90.0), (0.5, 88.0), (0.7, 70.0)):
        torch.manual_seed(0)
        model = FILTERS.add_masks(model_loader("resnet20"))
        prune_channels(model, 32, amount, "l1")
        save_checkpoint(str(folder / f"resnet20_{FILTERS.sparsity(model):.4f}.pth"), model, "resnet20", "digits",
                        "prune_structured_iterative", metrics={"val_acc": acc})
    common = ["--model_path", folder, "--dense_acc", "90", "--tolerance", "100", "--dataset", "digits"]
    for backend in ("torch", "onnxruntime"):
        out = run_script("find_drop_point.py", common + ["--max_latency_ms", "1000", "--latency_backend",
                                                         backend]).stdout
        assert f"latency ms (batch 1, {backend}) <= 1000" in out
        rows = [line for line in out.splitlines() if line.startswith("  sparsity ")]
        assert len(rows) == 3 and all(" ms (IQR " in r and r.endswith("fits") for r in rows), rows
    out = run_script("find_drop_point.py", common + ["--max_latency_ms", "1e-6", "--latency_backend",
                                                     "onnxruntime"]).stdout
    assert "least sparse checkpoint that fits: none" in out
    bad = run_script("find_drop_point.py", common + ["--max_latency_ms", "1", "--latency_backend", "tvm"], check=False)
    assert bad.returncode == 2 and "invalid choice: 'tvm'" in bad.stderr
