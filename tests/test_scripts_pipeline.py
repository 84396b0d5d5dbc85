"""pretrain.py -> prune_unstructure.py through the CLI on digits, and pretraining resume."""
import csv
import os

import pytest
import torch

import pretrain
from tests.conftest import run_script
from utils import pretraining

FAST = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "256", "--batch_size", "64"]


@pytest.mark.slow
def test_pretrain_then_prune_both_modes(tmp_path):
    wd = str(tmp_path)
    out = run_script("pretrain.py", FAST + ["--epochs", "2", "--work_dir", wd]).stdout
    dense = os.path.join(wd, "resnet20", "checkpoint", "ckpt.pth")
    assert f"wrote {dense}" in out
    ck = torch.load(dense, weights_only=True)
    assert ck["stage"] == "pretrain" and set(ck["metrics"]) >= {"val_acc", "test_acc"}

    run_script("prune_unstructure.py", FAST + ["--work_dir", wd, "--m_prune", "iterate", "--iter_end", "3",
                                               "--finetune_steps", "2", "--pruner", "glob"])
    folder = os.path.join(wd, "resnet20", "iterative")
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pth")) == [
        "resnet20_0.3.pth", "resnet20_0.51.pth", "resnet20_0.657.pth"]
    rows = list(csv.DictReader(open(os.path.join(folder, "prune_results.csv"))))
    assert [round(float(r["sparsity"]), 3) for r in rows] == [0.3, 0.51, 0.657]
    assert os.path.getsize(os.path.join(folder, "accuracy_vs_sparsity.png")) > 1000
    ck = torch.load(os.path.join(folder, "resnet20_0.657.pth"), weights_only=True)
    masks = [v for k, v in ck["state_dict"].items() if k.endswith("weight_mask")]
    zeros = sum(int((m == 0).sum()) for m in masks)
    assert zeros == 270_896 - round(0.7 * round(0.7 * (270_896 - round(0.3 * 270_896))))
    assert ck["sparsity"] == pytest.approx(zeros / 270_896)

    # --iter_start continues from the saved level instead of restarting from the dense model
    run_script("prune_unstructure.py", FAST + ["--work_dir", wd, "--m_prune", "iterative", "--iter_start", "4",
                                               "--iter_end", "4", "--finetune_steps", "1", "--pruner", "glob"])
    assert os.path.isfile(os.path.join(folder, "resnet20_0.7599.pth"))

    out = run_script("prune_unstructure.py", FAST + ["--work_dir", wd, "--m_prune", "oneshot", "--oneshot", "0.9",
                                                     "0.98", "--finetune_steps", "2"]).stdout
    folder = os.path.join(wd, "resnet20", "oneshot")
    for sp in ("0.9", "0.98"):
        ck = torch.load(os.path.join(folder, f"resnet20_{sp}.pth"), weights_only=True)
        assert ck["sparsity"] == pytest.approx(float(sp), abs=1e-4)
        assert ck["metrics"]["val_acc"] >= 0 and "test_acc" in ck["metrics"]
    assert "prune_results.csv" in out


class _Interrupt(Exception):
    pass


def test_pretrain_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    args = FAST + ["--epochs", "3", "--precision", "fp32", "--train_limit", "128"]
    full = pretrain.main(pretrain.get_args_parser().parse_args(args + ["--work_dir", str(tmp_path / "a")]))

    calls = {"n": 0}
    real = pretraining.train_one_epoch

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Interrupt()
        return real(*a, **k)

    monkeypatch.setattr(pretraining, "train_one_epoch", crash_on_third)
    with pytest.raises(_Interrupt):
        pretrain.main(pretrain.get_args_parser().parse_args(args + ["--work_dir", str(tmp_path / "b")]))
    monkeypatch.setattr(pretraining, "train_one_epoch", real)
    resumed = pretrain.main(pretrain.get_args_parser().parse_args(args + ["--work_dir", str(tmp_path / "b"),
                                                                         "--resume"]))
    assert resumed["val_acc"] == full["val_acc"] and resumed["test_acc"] == full["test_acc"]
    a = torch.load(tmp_path / "a" / "resnet20" / "checkpoint" / "last.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "resnet20" / "checkpoint" / "last.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_nothing_to_resume_is_a_clear_error(tmp_path):
    proc = run_script("pretrain.py", FAST + ["--epochs", "1", "--work_dir", str(tmp_path), "--resume"], check=False)
    assert proc.returncode == 2
    assert "nothing to resume" in proc.stderr and "Traceback" not in proc.stderr
