"""torchrun on two CPU processes: parallel episodes equal the sequential run of the same batches,
and pretraining / pruning finetunes run as DistributedDataParallel."""
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, run_script
from utils.records import read_jsonl

DATA = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "256", "--batch_size", "64",
        "--precision", "fp32"]


def torchrun(script, args, nproc=2):
    env = dict(os.environ, PYTHONPATH=ROOT, BRIDGE_PROGRESS="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def ddp_pipeline(tmp_path_factory):
    """Dense model pretrained with DDP on 2 processes, then one-shot pruned with a DDP finetune."""
    wd = str(tmp_path_factory.mktemp("ddp"))
    torchrun("pretrain.py", DATA + ["--epochs", "2", "--work_dir", wd])
    torchrun("prune_unstructure.py", DATA + ["--work_dir", wd, "--m_prune", "oneshot", "--oneshot", "0.95",
                                             "--finetune_steps", "3"])
    return wd


@pytest.mark.slow
def test_ddp_pretraining_and_pruning_write_one_set_of_outputs(ddp_pipeline):
    ck = torch.load(os.path.join(ddp_pipeline, "resnet20", "checkpoint", "ckpt.pth"), weights_only=True)
    assert not any(k.startswith("module.") for k in ck["state_dict"])  # saved unwrapped, by rank 0
    assert len(read_jsonl(os.path.join(ddp_pipeline, "resnet20", "oneshot", "prune_log.jsonl"))) == 1
    sparse = torch.load(os.path.join(ddp_pipeline, "resnet20", "oneshot", "resnet20_0.95.pth"), weights_only=True)
    assert sparse["sparsity"] == pytest.approx(0.95, abs=1e-4)


@pytest.mark.slow
def test_parallel_episodes_equal_sequential_batches(ddp_pipeline, tmp_path):
    common = DATA + ["--work_dir", ddp_pipeline, "--model_sparsity", "0.95", "--num_epochs", "4",
                     "--episodes_per_update", "2", "--mini_finetune_steps", "2", "--ssim_threshold", "0.6",
                     "--saliency_batches", "2", "--ssim_num_batches", "2", "--finetune_epochs", "0"]
    run_script("regrowth_oneshot.py", common + ["--save_dir", str(tmp_path / "seq")], env={"OMP_NUM_THREADS": "1"})
    torchrun("regrowth_oneshot.py", common + ["--save_dir", str(tmp_path / "par")])
    seq = read_jsonl(str(tmp_path / "seq" / "resnet20" / "oneshot" / "0.95" / "episodes.jsonl"))
    par = read_jsonl(str(tmp_path / "par" / "resnet20" / "oneshot" / "0.95" / "episodes.jsonl"))
    assert len(seq) == len(par) == 4
    for a, b in zip(seq, par):
        assert a["allocation"] == b["allocation"]
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-9)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    sa = torch.load(tmp_path / "seq" / "resnet20" / "oneshot" / "0.95" / "search_state.pth", weights_only=True)
    pa = torch.load(tmp_path / "par" / "resnet20" / "oneshot" / "0.95" / "search_state.pth", weights_only=True)
    for k, v in sa["reinforce"]["agent"].items():
        assert torch.allclose(v, pa["reinforce"]["agent"][k], atol=1e-7)  # the same policy updates
