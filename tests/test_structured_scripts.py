"""Structured scripts end to end on digits: prune_structure.py, both structured regrowth scripts, evaluation."""
import csv
import json
import os

import pytest
import torch

import pretrain
from tests.conftest import run_script
from utils.records import read_jsonl

DATA = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "256", "--batch_size", "64"]


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("structured"))
    pretrain.main(pretrain.get_args_parser().parse_args(DATA + ["--epochs", "2", "--work_dir", wd]))
    run_script("prune_structure.py", DATA + ["--work_dir", wd, "--m_prune", "iterative", "--iter_end", "3",
                                             "--finetune_steps", "3", "--pruner", "l1", "--save_compact"])
    return wd


@pytest.mark.slow
def test_prune_structure_outputs(structured):
    folder = os.path.join(structured, "resnet20", "structured_iterative")
    rows = list(csv.DictReader(open(os.path.join(folder, "prune_results.csv"))))
    assert [round(float(r["sparsity"]), 3) for r in rows] == [0.312, 0.536, 0.688]  # published ResNet20 schedule
    for r in rows:
        assert float(r["compact_max_abs_diff"]) < 1e-4
        assert 0 < float(r["param_ratio"]) < 1 and 0 < float(r["mac_ratio"]) < 1
    ck = torch.load(os.path.join(folder, "resnet20_0.6875.pth"), weights_only=True)
    assert ck["stage"] == "prune_structured_iterative" and ck["sparsity"] == pytest.approx(0.6875)
    assert any(k.endswith("bn1.weight_mask") for k in ck["state_dict"])  # BatchNorm masked too
    assert os.path.isfile(os.path.join(folder, "resnet20_0.6875_compact.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["taylor", "hessian"])
def test_prune_structure_gradient_importances_through_the_cli(structured, tmp_path, pruner):
    """The gradient importances run from the script (one level, one training batch for the gradients)."""
    dense = os.path.join(structured, "resnet20", "checkpoint", "ckpt.pth")
    run_script("prune_structure.py", DATA + ["--work_dir", str(tmp_path), "--dense_ckpt", dense, "--iter_end", "1",
                                             "--finetune_steps", "1", "--pruner", pruner, "--importance_batches", "1",
                                             "--batch_size", "16"])
    ck = torch.load(os.path.join(tmp_path, "resnet20", "structured_iterative", "resnet20_0.3125.pth"), weights_only=True)
    assert ck["sparsity"] == pytest.approx(0.3125) and ck["args"]["pruner"] == pruner


@pytest.mark.slow
def test_structured_oneshot_regrowth(structured, tmp_path):
    start = os.path.join(structured, "resnet20", "structured_iterative", "resnet20_0.6875.pth")
    save = str(tmp_path / "srg")
    run_script("regrowth_structure_oneshot.py", DATA + [
        "--work_dir", structured, "--initial_ckpt", start, "--save_dir", save, "--num_epochs", "3",
        "--mini_finetune_steps", "2", "--ssim_threshold", "0.5", "--saliency_batches", "2", "--ssim_num_batches", "2",
        "--sparsity_delta", "0.03", "--finetune_epochs", "0.25"])
    out = os.path.join(save, "resnet20", "structured_oneshot", "sp0.688")
    summary = json.load(open(os.path.join(out, "summary.json")))
    budget = int(784 * 0.03)
    assert summary["budget"] == budget and summary["regrown"] <= budget
    final = torch.load(os.path.join(out, "final_finetuned.pth"), weights_only=True)
    assert round((0.6875 - final["sparsity"]) * 784) == summary["regrown"]  # sparsity fell by exactly the filters
    assert summary["regrown"] > 0


@pytest.mark.slow
def test_structured_iterative_regrowth_and_evaluation(structured, tmp_path):
    save = str(tmp_path / "srg")
    run_script("regrowth_structure_iterative.py", DATA + [
        "--work_dir", structured, "--save_dir", save, "--num_epochs", "2", "--num_iters", "2",
        "--mini_finetune_steps", "2", "--ssim_threshold", "0.5", "--saliency_batches", "2", "--ssim_num_batches", "2"])
    rows = read_jsonl(os.path.join(save, "resnet20", "structured_iterative", "iterations.jsonl"))
    assert [r["iteration"] for r in rows] == [-1, 0, 1]
    assert rows[0]["sparsity"] > rows[1]["sparsity"] > rows[2]["sparsity"]
    proc = run_script("test_unstructure_regrowth_model.py", ["--dataset", "digits", "--model_path", save,
                                                             "--baseline_dir", os.path.join(structured, "resnet20")])
    assert "chan sp" in proc.stdout
    table = list(csv.DictReader(open(os.path.join(save, "evaluation.csv"))))
    compact = [r for r in table if r["file"].endswith("_compact.pth")]
    masked = {r["file"]: r for r in table}
    assert compact and all(float(r["test_acc"]) >= 0 for r in table)
    twin = masked[compact[0]["file"].replace("_compact.pth", ".pth")]
    assert float(compact[0]["test_acc"]) == pytest.approx(float(twin["test_acc"]), abs=0.5)  # same network


@pytest.mark.slow
def test_structured_iterative_finetune_scope_regrown(structured, tmp_path):
    """--finetune_scope regrown: the final finetune trains only the filters restored in some iteration."""
    save = str(tmp_path / "srg")
    proc = run_script("regrowth_structure_iterative.py", DATA + [
        "--work_dir", structured, "--save_dir", save, "--num_epochs", "2", "--num_iters", "2",
        "--mini_finetune_steps", "2", "--ssim_threshold", "0.5", "--saliency_batches", "2", "--ssim_num_batches", "2",
        "--finetune_epochs", "1", "--finetune_scope", "regrown"])
    assert "final: sparsity" in proc.stdout
    run_dir = os.path.join(save, "resnet20", "structured_iterative")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    start = torch.load(summary["start_ckpt"], weights_only=True)["state_dict"]
    last = torch.load(os.path.join(run_dir, "iter_1", "best_grown_model.pth"), weights_only=True)["state_dict"]
    final = torch.load(os.path.join(run_dir, "final_finetuned.pth"), weights_only=True)["state_dict"]
    changed = 0
    for key in (k for k in start if k.endswith("weight_mask") and start[k].dim() == 4):  # conv filters
        name = key[: -len(".weight_mask")]
        mask = last[key]
        assert torch.equal(final[key], mask)
        regrown = (mask > 0) & (start[key] == 0)
        before, after = last[f"{name}.weight_orig"] * mask, final[f"{name}.weight_orig"] * mask
        assert torch.equal(after[~regrown], before[~regrown]), name  # other filters untouched, pruned ones zero
        changed += int((after[regrown] != before[regrown]).sum())
    assert changed > 0
