"""Analysis tools: correlations against numpy/scipy, saliency orders against hand computations,
valid PNG figures, and the analysis commands end to end on digits."""
import csv
import glob
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from scipy import stats

import prune_unstructure
import regrowth_oneshot
from tests.conftest import prepare_work_dir, run_script
from utils.checkpoints import FORMAT
from utils.class_saliency import class_statistics, per_class_saliency
from utils.stats import correlations, fmt_mean_std, mean_std

DATA = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "256", "--batch_size", "64"]


def _valid_png(path):
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    return True


def test_correlations_match_scipy_and_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = -2 * x + rng.normal(scale=0.5, size=30)
    c = correlations(x, y)
    assert c["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert c["pearson_p"] == pytest.approx(stats.pearsonr(x, y)[1])
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731  (no ties in continuous data)
    assert c["spearman_rho"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1])
    assert c["spearman_p"] == pytest.approx(stats.spearmanr(x, y)[1])
    assert c["pearson_r"] < -0.9 and c["pearson_p"] < 1e-6
    assert math.isnan(correlations([1, 2], [3, 4])["pearson_r"])  # too few points
    assert math.isnan(correlations([1, 1, 1], [3, 4, 5])["spearman_rho"])  # constant input


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert fmt_mean_std([1.0, 3.0]) == "2.00 ± 1.41" and fmt_mean_std([5.0]) == "5.00"


class Quadratic(nn.Module):
    """logits = W x: cross-entropy's gradient and Hessian in W are known in closed form."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_per_class_saliency_orders_against_closed_form():
    torch.manual_seed(0)
    model = Quadratic()
    x = torch.randn(8, 3, 1, 1)
    y = torch.tensor([0, 1] * 4)
    sal = per_class_saliency(model, [(x, y)], ["fc"], 2, "cpu", orders=("first", "second", "fisher"),
                             hutchinson_samples=400)
    W = model.fc.weight.detach()
    for c in (0, 1):
        xc = x[y == c].flatten(1)
        p = torch.softmax(xc @ W.T, 1)
        onehot = torch.nn.functional.one_hot(torch.full((len(xc),), c), 2).float()
        g = ((p - onehot).T @ xc) / len(xc)  # mean-loss gradient, (2, 3)
        # Hessian diagonal of mean CE w.r.t. W[k, j]: mean over samples of p_k (1 - p_k) x_j^2
        h = (p * (1 - p)).T @ (xc ** 2) / len(xc)
        assert torch.allclose(sal["first"]["fc"][c], (g * W).abs(), atol=1e-6)
        assert torch.allclose(sal["fisher"]["fc"][c], g ** 2 * W ** 2, atol=1e-6)
        # Hutchinson is unbiased; with 400 samples it is within a few percent of 1/2 h w^2 here
        assert torch.allclose(sal["second"]["fc"][c], 0.5 * h * W ** 2, rtol=0.25, atol=1e-4)
    rows = class_statistics(sal)
    assert {r["order"] for r in rows} == {"first", "second", "fisher"} and len(rows) == 6


@pytest.fixture(scope="module")
def sparse_digits(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("analysis"))
    return prepare_work_dir(wd, DATA, 2, ["--m_prune", "oneshot", "--oneshot", "0.95", "--finetune_steps", "3"])


@pytest.mark.slow
def test_single_layer_analysis_cli(sparse_digits, tmp_path):
    save = str(tmp_path / "sla")
    proc = run_script("single_layer_regrowth_analysis.py", DATA + [
        "--work_dir", sparse_digits, "--model_sparsity", "0.95", "--save_dir", save, "--seeds", "0", "1",
        "--mini_finetune_steps", "2", "--saliency_batches", "2", "--ssim_num_batches", "2",
        "--layers", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer3.1.conv2"])
    out = os.path.join(save, "resnet20", "0.95")
    rows = list(csv.DictReader(open(os.path.join(out, "single_layer.csv"))))
    assert len(rows) == 4
    for r in rows:
        gains = [float(r["gain_seed0"]), float(r["gain_seed1"])]
        assert float(r["gain_mean"]) == pytest.approx(np.mean(gains), abs=1e-3)
    corr = json.load(open(os.path.join(out, "correlations.json")))
    expected = correlations([float(r["ssim"]) for r in rows], [float(r["gain_mean"]) for r in rows])
    for k in ("pearson_r", "spearman_rho"):
        assert (math.isnan(corr[k]) and math.isnan(expected[k])) or corr[k] == pytest.approx(expected[k], abs=1e-4)
    assert _valid_png(os.path.join(out, "ssim_vs_gain.png")) and _valid_png(os.path.join(out, "ssim_per_layer.png"))
    assert "SSIM vs gain" in proc.stdout


@pytest.mark.slow
def test_saliency_analysis_cli(sparse_digits, tmp_path):
    out = str(tmp_path / "sal")
    run_script("saliency_analysis.py", ["--dataset", "digits", "--work_dir", sparse_digits, "--out_dir", out,
                                        "--max_batches", "1", "--orders", "first", "second"])
    rows = list(csv.DictReader(open(os.path.join(out, "per_class_saliency.csv"))))
    assert len(rows) == 2 * 3 * 10  # orders x default layers x classes
    for name in os.listdir(out):
        if name.endswith(".png"):
            assert _valid_png(os.path.join(out, name))


@pytest.mark.slow
def test_report_groups_seeds(sparse_digits, tmp_path):
    runs = str(tmp_path / "runs")
    for seed in (0, 1):
        regrowth_oneshot.main(regrowth_oneshot.get_args_parser().parse_args(DATA + [
            "--work_dir", sparse_digits, "--save_dir", runs, "--model_sparsity", "0.95", "--num_epochs", "1",
            "--allocator", "greedy", "--mini_finetune_steps", "1", "--ssim_threshold", "0.9", "--saliency_batches", "1",
            "--ssim_num_batches", "1", "--finetune_epochs", "0", "--seed", str(seed), "--tag", f"s{seed}"]))
    # the direct arm: pruning straight to the regrown sparsity, one work dir per seed
    final = json.load(open(glob.glob(os.path.join(runs, "**", "summary.json"), recursive=True)[0]))["final_sparsity"]
    direct = []
    for seed in (0, 1):
        d = str(tmp_path / f"direct_s{seed}")
        prune_unstructure.main(prune_unstructure.get_args_parser().parse_args(DATA + [
            "--work_dir", d, "--dense_ckpt", os.path.join(sparse_digits, "resnet20", "checkpoint", "ckpt.pth"),
            "--m_prune", "oneshot", "--oneshot", f"{final:.6f}", "--finetune_steps", "2", "--seed", str(seed)]))
        direct.append(d)
    out = str(tmp_path / "report.md")
    proc = run_script("report.py", ["--m_name", "resnet20", "--work_dir", sparse_digits, "--runs", runs, "--out", out,
                                    "--direct"] + direct + ["--curve_dirs", direct[0]])
    text = open(out).read()
    assert "| oneshot | lamp | 0.9500 |" in text  # the pruning curve row
    assert "| direct_s0/oneshot | lamp |" in text  # a curve from --curve_dirs, labelled by its folder
    line = next(l for l in text.splitlines() if l.startswith("| oneshot | weights | greedy"))
    assert "(n=2)" in line and "0, 1" in line and "±" in line
    assert "(oneshot)" in line  # compared with the curve its start came from, not with direct_s0/oneshot
    assert _valid_png(str(tmp_path / "report.png"))
    assert "wrote" in proc.stdout
    # the comparison with the direct arm, recomputed from the runs' own records
    summary = json.load(open(str(tmp_path / "report.json")))
    (group,) = summary["groups"]
    regrown = [json.load(open(p))["final_test_acc"] for p in glob.glob(os.path.join(runs, "**", "summary.json"),
                                                                        recursive=True)]
    direct_acc = [json.loads(open(os.path.join(d, "resnet20", "oneshot", "prune_log.jsonl")).readline())["test_acc"]
                  for d in direct]
    assert group["direct_n"] == 2 and group["diff_vs_direct"] == pytest.approx(np.mean(regrown) - np.mean(direct_acc))
    if np.ptp(regrown + direct_acc) > 0:  # Welch's test, recomputed; a constant sample leaves p undefined
        expected = stats.ttest_ind(regrown, direct_acc, equal_var=False).pvalue
        assert group["welch_p"] == pytest.approx(expected, nan_ok=True)
    assert group["ci_low"] <= group["diff_vs_direct"] + 1e-9 and group["diff_vs_direct"] <= group["ci_high"] + 1e-9
    assert summary["best_allocator"] == {group["start_ckpt"]: "greedy"}


def test_report_groups_the_seeds_of_one_method_and_nothing_else(tmp_path):
    """Seeds with their own start checkpoints (made alike) form one group; another reward proxy, selection or
    start recipe is another method even under the same allocator."""
    from utils import study_results

    def start(name, steps, seed):
        path = str(tmp_path / name)
        torch.save({"format": FORMAT, "state_dict": {}, "stage": "prune_oneshot", "pruner": "lamp",
                    "finetune_steps": steps, "sparsity": 0.95000001, "args": {"seed": seed}}, path)
        return path

    def run(seed, start_path, **method):
        args = {"allocator": "rl", "reward_proxy": "saliency", "selection": "saliency", "num_epochs": 400,
                "seed": seed, "tag": f"x_s{seed}", "initial_ckpt": start_path, "save_dir": f"d{seed}", **method}
        return {"type": "oneshot", "kind": "weights", "final_sparsity": 0.93, "start_ckpt": start_path,
                "method_args": args, "seed": seed}

    s0, s1, s2 = start("s0.pth", 250, 0), start("s1.pth", 250, 1), start("other.pth", 500, 0)
    rows = [run(0, s0), run(1, s1, device="cpu"),  # one method: seed, paths, execution settings differ
            run(0, s0, reward_proxy="steps"), run(0, s0, selection="magnitude"),  # two other methods
            run(0, s2)]  # a start made with another recipe
    groups = study_results.group_runs(rows)
    assert sorted(len(g) for g in groups) == [1, 1, 1, 2]
    (pair,) = [g for g in groups if len(g) == 2]
    assert [r["seed"] for r in pair] == [0, 1]
    assert study_results.start_identity(str(tmp_path / "missing.pth")) == str(tmp_path / "missing.pth")


def test_report_matches_a_run_to_the_curve_folder_of_its_start(tmp_path, monkeypatch):
    """By resolved folder: a start from another work dir's `oneshot` curve is not this work dir's `oneshot`."""
    from utils import study_results

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "resnet20" / "oneshot").mkdir(parents=True)
    folders = study_results.curve_folders(str(a), "resnet20", {"oneshot"})
    folders.update(study_results.curve_folders(str(b), "resnet20", {"b/oneshot"}, prefix="b/"))
    assert study_results.curve_for_start(str(a / "resnet20" / "oneshot" / "m.pth"), folders) == "oneshot"
    assert study_results.curve_for_start(str(b / "resnet20" / "oneshot" / "m.pth"), folders) == "b/oneshot"
    assert study_results.curve_for_start(str(tmp_path / "c" / "resnet20" / "oneshot" / "m.pth"), folders) is None
    assert study_results.curve_for_start(None, folders) is None
    # a relative path recorded elsewhere: its trailing folders decide
    monkeypatch.chdir(tmp_path / "a")
    assert study_results.curve_for_start(os.path.join("b", "resnet20", "oneshot", "m.pth"), folders) == "b/oneshot"
    assert study_results.curve_for_start(os.path.join("resnet20", "oneshot", "m.pth"), folders) == "oneshot"
