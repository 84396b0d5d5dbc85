"""kill -9 in the middle of a long run, then --resume: the run ends where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, prepare_work_dir, run_script
from utils.records import read_jsonl

DATA = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "256", "--batch_size", "64",
        "--precision", "fp32"]
ENV = {"OMP_NUM_THREADS": "1"}  # same thread count in every run, so float results are identical


def kill_when(script, args, marker, count=1):
    """Start a stage script, SIGKILL it once `marker` has appeared `count` times on stdout."""
    env = dict(os.environ, PYTHONPATH=ROOT, BRIDGE_PROGRESS="0", **ENV)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = 0
    for line in proc.stdout:
        if marker in line:
            seen += 1
            if seen >= count:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"{script} ended before it could be killed"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("killbase"))
    return prepare_work_dir(wd, DATA, 2, ["--m_prune", "oneshot", "--oneshot", "0.95", "--finetune_steps", "2"],
                            ["--sparsity", "0.6", "--iter_end", "3", "--finetune_steps", "2"])


def _state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_pretrain_kill_and_resume(tmp_path):
    args = DATA + ["--epochs", "4"]
    run_script("pretrain.py", args + ["--work_dir", str(tmp_path / "a")], env=ENV)
    kill_when("pretrain.py", args + ["--work_dir", str(tmp_path / "b")], "[pretrain] epoch 2/4")
    run_script("pretrain.py", args + ["--work_dir", str(tmp_path / "b"), "--resume"], env=ENV)
    for name in ("ckpt.pth", "last.pth"):
        assert _same(_state(tmp_path / "a" / "resnet20" / "checkpoint" / name),
                     _state(tmp_path / "b" / "resnet20" / "checkpoint" / name))


@pytest.mark.slow
def test_pruning_kill_and_resume(base, tmp_path):
    dense = os.path.join(base, "resnet20", "checkpoint", "ckpt.pth")
    args = DATA + ["--dense_ckpt", dense, "--iter_end", "3", "--finetune_steps", "4", "--pruner", "glob"]
    run_script("prune_unstructure.py", args + ["--work_dir", str(tmp_path / "a")], env=ENV)
    kill_when("prune_unstructure.py", args + ["--work_dir", str(tmp_path / "b")], "[iterative] sparsity 0.5100")
    run_script("prune_unstructure.py", args + ["--work_dir", str(tmp_path / "b"), "--resume"], env=ENV)
    for sp in ("0.3", "0.51", "0.657"):
        assert _same(_state(tmp_path / "a" / "resnet20" / "iterative" / f"resnet20_{sp}.pth"),
                     _state(tmp_path / "b" / "resnet20" / "iterative" / f"resnet20_{sp}.pth"))
    rows = read_jsonl(str(tmp_path / "b" / "resnet20" / "iterative" / "prune_log.jsonl"))
    assert sorted(r["key"] for r in rows) == [1, 2, 3]


def _search_args(base, save):
    return DATA + ["--work_dir", base, "--save_dir", save, "--mini_finetune_steps", "2", "--ssim_threshold", "0.6",
                   "--saliency_batches", "2", "--ssim_num_batches", "2"]


@pytest.mark.slow
def test_oneshot_search_kill_and_resume(base, tmp_path):
    extra = ["--model_sparsity", "0.95", "--num_epochs", "5", "--finetune_epochs", "0.5"]
    run_script("regrowth_oneshot.py", _search_args(base, str(tmp_path / "a")) + extra, env=ENV)
    kill_when("regrowth_oneshot.py", _search_args(base, str(tmp_path / "b")) + extra, "[oneshot rl] ep 3/5")
    run_script("regrowth_oneshot.py", _search_args(base, str(tmp_path / "b")) + extra + ["--resume"], env=ENV)
    out = os.path.join("resnet20", "oneshot", "0.95")
    sa = json.load(open(tmp_path / "a" / out / "summary.json"))
    sb = json.load(open(tmp_path / "b" / out / "summary.json"))
    for key in ("best_reward", "best_episode", "best_allocation", "final_val_acc", "final_test_acc", "episodes"):
        assert sa[key] == sb[key], key
    assert _same(_state(tmp_path / "a" / out / "final_finetuned.pth"), _state(tmp_path / "b" / out / "final_finetuned.pth"))


@pytest.mark.slow
def test_iterative_search_kill_and_resume(base, tmp_path):
    extra = ["--num_epochs", "3", "--num_iters", "2", "--target_sparsity", "0.5"]
    run_script("regrowth_iterative.py", _search_args(base, str(tmp_path / "a")) + extra, env=ENV)
    # killed in the middle of iteration 1's search: iteration 0 is finished, iteration 1 resumes its episodes
    kill_when("regrowth_iterative.py", _search_args(base, str(tmp_path / "b")) + extra, "[iter 1 rl] ep 2/3")
    run_script("regrowth_iterative.py", _search_args(base, str(tmp_path / "b")) + extra + ["--resume"], env=ENV)
    run = os.path.join("resnet20", "iterative")
    for it in (0, 1):
        assert _same(_state(tmp_path / "a" / run / f"iter_{it}" / "best_grown_model.pth"),
                     _state(tmp_path / "b" / run / f"iter_{it}" / "best_grown_model.pth"))
    ra = read_jsonl(str(tmp_path / "a" / run / "iterations.jsonl"))
    rb = read_jsonl(str(tmp_path / "b" / run / "iterations.jsonl"))
    assert [r["val_acc"] for r in ra] == [r["val_acc"] for r in rb]


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoints(base, tmp_path):
    dense = os.path.join(base, "resnet20", "checkpoint", "ckpt.pth")
    before = open(dense, "rb").read()
    proc = run_script("prune_unstructure.py", DATA + ["--dense_ckpt", dense, "--work_dir", str(tmp_path), "--lr", "1e12",
                                                      "--iter_end", "1", "--finetune_steps", "30"], check=False)
    assert proc.returncode == 2 and "non-finite training loss" in proc.stderr and "Traceback" not in proc.stderr
    assert open(dense, "rb").read() == before  # user data untouched
    assert not os.path.exists(tmp_path / "resnet20" / "iterative" / "resnet20_0.3.pth")  # no bad checkpoint
