"""Regrowth scripts end to end on digits: CLI runs, outputs, exact budgets, resume = uninterrupted."""
import csv
import json
import os
from types import SimpleNamespace

import pytest
import torch

import regrowth_iterative
import regrowth_oneshot
from tests.conftest import prepare_work_dir, run_script
from utils import cli
from utils.checkpoints import model_from_checkpoint
from utils.hparams import DataHparams
from utils.pruning_curve import load_pruning_curve
from utils.records import read_jsonl
from utils.regrowth.env import RegrowthEnv

DATA = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "256", "--batch_size", "64"]


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A dense model and one-shot / iterative pruned checkpoints on digits (small budgets)."""
    wd = str(tmp_path_factory.mktemp("pipeline"))
    return prepare_work_dir(wd, DATA, 3, ["--m_prune", "oneshot", "--oneshot", "0.95", "--finetune_steps", "4"],
                            ["--m_prune", "iterative", "--sparsity", "0.6", "--iter_end", "4", "--finetune_steps", "3"])


def _oneshot_args(wd, save, *extra):
    return DATA + ["--work_dir", wd, "--save_dir", save, "--model_sparsity", "0.95", "--num_epochs", "4",
                   "--mini_finetune_steps", "2", "--ssim_threshold", "0.6", "--saliency_batches", "2",
                   "--ssim_num_batches", "2", "--precision", "fp32", *extra]


@pytest.mark.slow
def test_oneshot_cli_outputs_and_budget(pipeline, tmp_path):
    save = str(tmp_path / "rg")
    proc = run_script("regrowth_oneshot.py", _oneshot_args(pipeline, save, "--finetune_epochs", "0.5"))
    out_dir = os.path.join(save, "resnet20", "oneshot", "0.95")
    files = set(os.listdir(out_dir))
    assert {"final_finetuned.pth", "episodes.jsonl", "search_summary.txt", "summary.json", "search_curves.png",
            "allocation.png", "search_state.pth"} <= files
    assert any(f.startswith("best_ep") for f in files)
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    budget = int(270_896 * 0.01)
    assert summary["budget"] == budget and summary["regrown"] <= budget
    start = torch.load(os.path.join(pipeline, "resnet20", "oneshot", "resnet20_0.95.pth"), weights_only=True)
    final = torch.load(os.path.join(out_dir, "final_finetuned.pth"), weights_only=True)
    start_pruned = round(start["sparsity"] * 270_896)
    assert round(final["sparsity"] * 270_896) == start_pruned - summary["regrown"]  # exactly the regrown count
    # regrowth only ever turns masks on, and only inside the search layers
    for k, m in start["state_dict"].items():
        if k.endswith("weight_mask"):
            new = final["state_dict"][k]
            assert torch.all(new >= m)
            if k[: -len(".weight_mask")] not in summary["search_layers"]:
                assert torch.equal(new, m)
    rows = read_jsonl(os.path.join(out_dir, "episodes.jsonl"))
    assert [r["episode"] for r in rows] == [1, 2, 3, 4]
    assert set(final["metrics"]) >= {"val_acc", "test_acc"}
    assert "final: sparsity" in proc.stdout


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_oneshot_resume_ends_where_uninterrupted_run_ends(pipeline, tmp_path, monkeypatch):
    args = _oneshot_args(pipeline, str(tmp_path / "full"), "--finetune_epochs", "0")
    full = regrowth_oneshot.main(regrowth_oneshot.get_args_parser().parse_args(args))

    real = RegrowthEnv.evaluate
    calls = {"n": 0}

    def crash_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Crash()
        return real(self, *a, **k)

    args = _oneshot_args(pipeline, str(tmp_path / "cut"), "--finetune_epochs", "0")
    monkeypatch.setattr(RegrowthEnv, "evaluate", crash_on_third)
    with pytest.raises(_Crash):
        regrowth_oneshot.main(regrowth_oneshot.get_args_parser().parse_args(args))
    monkeypatch.setattr(RegrowthEnv, "evaluate", real)
    resumed = regrowth_oneshot.main(regrowth_oneshot.get_args_parser().parse_args(args + ["--resume"]))
    for key in ("best_reward", "best_episode", "best_allocation", "final_val_acc", "final_test_acc", "episodes"):
        assert resumed[key] == full[key], key
    a = read_jsonl(str(tmp_path / "full" / "resnet20" / "oneshot" / "0.95" / "episodes.jsonl"))
    b = read_jsonl(str(tmp_path / "cut" / "resnet20" / "oneshot" / "0.95" / "episodes.jsonl"))
    assert [(r["reward"], r["allocation"]) for r in a] == [(r["reward"], r["allocation"]) for r in b]


@pytest.mark.slow
@pytest.mark.parametrize("allocator", ["greedy", "random"])
def test_oneshot_other_allocators(pipeline, tmp_path, allocator):
    save = str(tmp_path / "rg")
    res = regrowth_oneshot.main(regrowth_oneshot.get_args_parser().parse_args(
        _oneshot_args(pipeline, save, "--allocator", allocator, "--finetune_epochs", "0")))
    assert res["episodes"] == (1 if allocator == "greedy" else 4)
    assert sum(res["best_allocation"].values()) == res["budget"]
    assert os.path.isdir(os.path.join(save, "resnet20", "oneshot", f"0.95_{allocator}"))


@pytest.mark.slow
@pytest.mark.parametrize("proxy", ["bn", "saliency", "gradient"])
def test_oneshot_search_with_a_cheap_reward_proxy_through_the_cli(pipeline, tmp_path, proxy):
    """--reward_proxy bn / saliency / gradient: a whole search and final finetune; the episodes log what the proxy measured
    and bn never trains (the best state's weights are the regrown ones)."""
    save = str(tmp_path / "rg")
    extra = ["--reward_proxy", proxy, "--init_strategy", "reference", "--bn_batches", "2", "--finetune_epochs", "0"]
    if proxy == "bn":
        extra += ["--reward_metric", "loss"]
    proc = run_script("regrowth_oneshot.py", _oneshot_args(pipeline, save, *extra))
    out_dir = os.path.join(save, "resnet20", "oneshot", "0.95")
    rows = read_jsonl(os.path.join(out_dir, "episodes.jsonl"))
    assert [r["episode"] for r in rows] == [1, 2, 3, 4]
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    if proxy == "bn":
        assert all("val_loss" in r and "reference_loss" in r and "finetune_train_s" not in r for r in rows)
        assert all(r["reward"] == pytest.approx(r["reference_loss"] - r["val_loss"] + 0.005 * r["usage"]) for r in rows)
        assert "BatchNorm re-estimated on 2 training batches" in summary["reward_proxy"]
    else:
        assert all(0 <= r["restored_share"] <= 1 for r in rows)
        assert all(r["reward"] == pytest.approx(r["restored_share"] + 0.005 * r["usage"]) for r in rows)
        assert "restored share" in proc.stdout


def test_cheap_proxies_refuse_what_they_cannot_score(pipeline):
    """bn with weights regrown at 0 would score every allocation alike; the iterative search needs the
    accuracy reference of the pruning curve. Both are one-line errors."""
    proc = run_script("regrowth_oneshot.py", _oneshot_args(pipeline, "unused", "--reward_proxy", "bn"), check=False)
    assert proc.returncode == 2 and "init_strategy zero" in proc.stderr and "Traceback" not in proc.stderr
    for extra in (["--reward_proxy", "saliency"], ["--reward_metric", "loss"]):
        proc = run_script("regrowth_iterative.py", DATA + ["--work_dir", pipeline, "--save_dir", "unused", *extra],
                          check=False)
        assert proc.returncode == 2 and "pruning curve" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_iterative_cli_and_resume(pipeline, tmp_path):
    save = str(tmp_path / "rg")
    args = DATA + ["--work_dir", pipeline, "--save_dir", save, "--num_epochs", "2", "--num_iters", "2",
                   "--mini_finetune_steps", "2", "--ssim_threshold", "0.6", "--saliency_batches", "2",
                   "--ssim_num_batches", "2", "--target_sparsity", "0.5"]
    run_script("regrowth_iterative.py", args)
    run_dir = os.path.join(save, "resnet20", "iterative")
    for i in (0, 1):
        ck = torch.load(os.path.join(run_dir, f"iter_{i}", "best_grown_model.pth"), weights_only=True)
        assert ck["stage"] == "regrowth_iterative_iter" and "baseline_val_acc" in ck["metrics"]
    rows = read_jsonl(os.path.join(run_dir, "iterations.jsonl"))
    assert [r["iteration"] for r in rows] == [-1, 0, 1]
    sp = [r["sparsity"] for r in rows]
    assert sp[0] > sp[1] > sp[2]  # every iteration regrows
    steps = [round((a - b) * 270_896) for a, b in zip(sp, sp[1:])]
    assert all(271 - 1 <= s <= 1354 for s in steps)  # within the 0.1% .. 0.5% budget options
    # --resume after a finished run with more iterations continues from iteration 2
    proc = run_script("regrowth_iterative.py", [a if a != "2" or i != args.index("--num_iters") + 1 else "3"
                                               for i, a in enumerate(args)] + ["--resume"])
    assert "continuing after iteration 1" in proc.stdout
    assert [r["iteration"] for r in read_jsonl(os.path.join(run_dir, "iterations.jsonl"))] == [-1, 0, 1, 2]


def _iterative_args(wd, save, *extra):
    return DATA + ["--work_dir", wd, "--save_dir", save, "--num_epochs", "2", "--num_iters", "2",
                   "--mini_finetune_steps", "2", "--ssim_threshold", "0.6", "--saliency_batches", "2",
                   "--ssim_num_batches", "2", "--target_sparsity", "0.5", *extra]


@pytest.mark.slow
def test_iterative_finetune_scope_regrown_trains_only_weights_regrown_in_some_iteration(pipeline, tmp_path):
    save = str(tmp_path / "rg")
    proc = run_script("regrowth_iterative.py", _iterative_args(pipeline, save, "--finetune_epochs", "1",
                                                               "--finetune_scope", "regrown"))
    assert "Traceback" not in proc.stderr and "final: sparsity" in proc.stdout
    run_dir = os.path.join(save, "resnet20", "iterative")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    start = torch.load(summary["start_ckpt"], weights_only=True)["state_dict"]
    iter0 = torch.load(os.path.join(run_dir, "iter_0", "best_grown_model.pth"), weights_only=True)["state_dict"]
    last = torch.load(os.path.join(run_dir, "iter_1", "best_grown_model.pth"), weights_only=True)["state_dict"]
    final = torch.load(os.path.join(run_dir, "final_finetuned.pth"), weights_only=True)["state_dict"]
    masks = [k[: -len(".weight_mask")] for k in start if k.endswith(".weight_mask")]
    changed = {}
    regrown_in = {0: 0, 1: 0}
    for name in masks:
        m0, m1, mask = start[f"{name}.weight_mask"], iter0[f"{name}.weight_mask"], last[f"{name}.weight_mask"]
        assert torch.equal(final[f"{name}.weight_mask"], mask)  # the final finetune regrows and prunes nothing
        regrown = (mask > 0) & (m0 == 0)  # regrown in iteration 0 or 1
        regrown_in[0] += int(((m1 > 0) & (m0 == 0)).sum())
        regrown_in[1] += int(((mask > 0) & (m1 == 0)).sum())
        before, after = last[f"{name}.weight_orig"] * mask, final[f"{name}.weight_orig"] * mask
        assert torch.equal(after[(mask > 0) & ~regrown], before[(mask > 0) & ~regrown]), name  # other alive weights
        assert torch.all(after[mask == 0] == 0), name  # pruned weights stay zero
        changed[name] = int((after[regrown] != before[regrown]).sum())
    assert regrown_in[0] > 0 and regrown_in[1] > 0  # both iterations regrew, so the scope is their union
    assert sum(changed.values()) > 0  # the regrown weights did train
    trained = {f"{n}.weight_orig" for n in masks} | {f"{n}.weight_mask" for n in masks}
    for key, value in last.items():  # biases, BatchNorm affine parameters: frozen (running statistics may move)
        if key not in trained and not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(final[key], value), key


def _subset_accuracy(model, loader):
    """Accuracy (%) of `model` on `loader`, computed here rather than by the pipeline's evaluate()."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += y.numel()
    return 100.0 * correct / total


@pytest.mark.slow
def test_iterative_reward_reference_is_calibrated_on_the_reward_val_subset(pipeline, tmp_path):
    """With --reward_val_subset the iterative reference is the pruning curve shifted by the offset
    acc(subset) - acc(full val) of the model each iteration starts from, as in the one-shot script."""
    save = str(tmp_path / "rg")
    args = regrowth_iterative.get_args_parser().parse_args(
        _iterative_args(pipeline, save, "--reward_val_subset", "40", "--precision", "fp32"))
    summary = regrowth_iterative.main(args)
    run_dir = os.path.join(save, "resnet20", "iterative")
    curve = load_pruning_curve(os.path.join(pipeline, "resnet20", "iterative"))
    data = cli.build_data(DataHparams.from_args(args), args.seed, torch.device("cpu"), "resnet20")
    val_subset = data.subset("val", 40, seed=args.seed)
    assert len(val_subset.dataset) == 40 < len(data.val.dataset)
    starts = [summary["start_ckpt"], os.path.join(run_dir, "iter_0", "best_grown_model.pth")]
    offsets = []
    for it, start_path in enumerate(starts):
        model, _ = model_from_checkpoint(start_path, "resnet20", expect="sparse")
        offset = _subset_accuracy(model, val_subset) - _subset_accuracy(model, data.val)
        offsets.append(offset)
        for row in read_jsonl(os.path.join(run_dir, f"iter_{it}", "episodes.jsonl")):
            assert row["reference_acc"] == pytest.approx(curve(row["sparsity"]) + offset, abs=1e-6), (it, row)
    assert any(abs(o) > 1e-6 for o in offsets)  # the subset is not as hard as the full split: the shift matters


def test_bad_regrowth_inputs_are_one_line_errors(tmp_path):
    proc = run_script("regrowth_oneshot.py", ["--m_name", "resnet99", "--dataset", "digits"], check=False)
    assert proc.returncode == 2 and "unknown model 'resnet99'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("regrowth_oneshot.py", ["--m_name", "resnet20", "--dataset", "digits", "--work_dir",
                                              str(tmp_path)], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
    assert os.listdir(tmp_path) == []  # the rejected run made no output folder under ./
    proc = run_script("regrowth_oneshot.py", ["--m_name", "resnet20", "--regrow_step", "1.5"], check=False)
    assert proc.returncode == 2 and "--regrow_step" in proc.stderr


@pytest.mark.slow
def test_evaluation_script_on_a_folder(pipeline, tmp_path):
    save = str(tmp_path / "rg")
    regrowth_oneshot.main(regrowth_oneshot.get_args_parser().parse_args(
        _oneshot_args(pipeline, save, "--allocator", "greedy", "--finetune_epochs", "0.25")))
    proc = run_script("test_unstructure_regrowth_model.py", [
        "--dataset", "digits", "--model_path", save, "--baseline_dir", os.path.join(pipeline, "resnet20", "oneshot")])
    rows = {os.path.basename(r["file"]): r for r in csv.DictReader(open(os.path.join(save, "evaluation.csv")))}
    final = rows["final_finetuned.pth"]
    assert final["kind"] == "regrown" and rows["resnet20_0.95.pth"]["kind"] == "pruned"
    assert float(final["weight_sparsity"]) == pytest.approx(0.94, abs=1e-3)
    assert int(final["macs"]) == 40_813_184  # resnet20 dense MACs per image (see test_metrics)
    assert int(final["nonzero_macs"]) < int(final["macs"])
    assert os.path.getsize(os.path.join(save, "accuracy_vs_sparsity.png")) > 1000
    assert "nz/compact" in proc.stdout


@pytest.mark.parametrize("module", [regrowth_oneshot, regrowth_iterative])
def test_fast_preset_fills_only_what_is_not_given(module):
    """--fast sets the proxy settings where they are missing; explicit values and the defaults stay."""
    from utils.regrowth.hparams import FAST_PRESET, RegrowthHparams

    def resolved(argv):
        """The flags as the run records them: the parsed values with the resolved hyper-parameters over them."""
        args = module.get_args_parser().parse_args(argv)
        return SimpleNamespace(**RegrowthHparams.from_args(args).record(args))

    plain = resolved([])
    # published behaviour without --fast: epochs, full validation split, one saliency epoch, constant lr
    assert [getattr(plain, k) for k in FAST_PRESET] == [None, "constant", 1, None, None]
    fast = resolved(["--fast", "--mini_finetune_steps", "7"])
    assert fast.mini_finetune_steps == 7
    assert fast.mini_finetune_schedule == FAST_PRESET["mini_finetune_schedule"] == "cosine"
    assert fast.reward_repeats == FAST_PRESET["reward_repeats"] == 3
    with pytest.raises(Exception, match="reward_repeats"):
        resolved(["--reward_repeats", "0"])
    assert fast.reward_val_subset == FAST_PRESET["reward_val_subset"]
    assert fast.saliency_batches == FAST_PRESET["saliency_batches"]
