"""experiments/cifar10_converged.sh end to end on digits with tiny budgets: N comes from the calibration run, the
start is the level just past the knee, every arm ends at the knee's sparsity with the same recipe, the report
holds the arms table with Welch / bootstrap differences and training FLOPs, and a rerun skips what is done."""
import json
import os

import pytest

from tests.conftest import run_script, run_study

TINY = {"DATASET": "digits", "SEEDS": "0 1", "EVAL_EVERY": "2", "N_MAX": "4", "CAL_STEPS": "16", "CAL_SPARSITY": "0.9",
        "CURVE_LEVELS": "0.5 0.9 0.98 0.995", "SSIM_THRESHOLD": "0.6", "SALIENCY_BATCHES": "2", "SSIM_BATCHES": "2",
        "RL_EPISODES": "3", "FAST_EPISODES": "1", "TOLERANCE": "1",
        "EXTRA_ARGS": "--batch_size 64 --train_limit 256",
        "REGROW_EXTRA_ARGS": "--mini_finetune_steps 2 --reward_repeats 1"}


def _run(tmp_path, dense):
    return run_study("cifar10_converged.sh", tmp_path, dict(TINY, DENSE=dense), timeout=1500)


@pytest.mark.slow
def test_converged_study_on_digits(tmp_path):
    wd = str(tmp_path / "dense")
    run_script("pretrain.py", ["--dataset", "digits", "--m_name", "resnet20", "--batch_size", "64", "--epochs", "3",
                               "--work_dir", wd])
    dense = os.path.join(wd, "resnet20", "checkpoint", "ckpt.pth")
    out = _run(tmp_path, dense)
    res = tmp_path / "results"
    for name in ("report.md", "report_compute.png", "report.json", "calibration.png", "calibration_evals.jsonl",
                 "knee.json", "knee.png", "timings.csv", "budgets.md"):
        assert (res / name).is_file(), name
    assert "[study] N = " in out
    n = int(out.split("[study] N = ")[1].split()[0])
    assert n in (2, 4)  # an evaluated step count no larger than N_MAX
    report = json.load(open(res / "report.json"))
    arms = {a["arm"]: a for a in report["arms"]}
    assert len(arms) == 10 and all(a["n"] == 2 for a in arms.values())
    knee = json.load(open(res / "knee.json"))
    target = knee["knee"]["sparsity"]
    for a in arms.values():  # every arm at the knee's sparsity (to the weight, up to the 4-place file names)
        assert a["sparsity"] == pytest.approx(target, abs=2e-5), a["arm"]
    b = "(b) direct, 2N"
    for label, a in arms.items():
        if label != b:
            assert set(a["vs"][b]) == {"val_acc", "test_acc"} and "welch_p" in a["vs"][b]["test_acc"]
    # equal steps: (b) trains 2N steps from the dense model; (a) is its N-step state; a regrown arm's compute is
    # its start's N steps + search + final N, a transplant's its source's + 2N
    assert arms["(a) direct, N"]["training_flops_mean"] < arms[b]["training_flops_mean"]
    transplant = next(a for k, a in arms.items() if k.startswith("(h)"))
    source = next(a for k, a in arms.items() if k.startswith("(c) "))
    assert transplant["training_flops_mean"] > source["training_flops_mean"]
    text = open(res / "report.md").read()
    assert "## Arms" in text and "(c') BRIDGE rl, --fast" in text
    timings = open(res / "timings.csv").read()
    assert "calibration," in timings and "transplant_magnitude_s1," in timings
    again = _run(tmp_path, dense)
    assert "calibration: done before, skipped" in again and "uniform_random_s1: done before, skipped" in again
