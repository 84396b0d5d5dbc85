"""experiments/cifar10_cpu.sh end to end on digits with tiny budgets: every stage runs, the starts come
from the knee, every arm lands at the direct arm's sparsity, the results folder holds the table, the
figures and the budgets, and a second invocation skips what is done."""
import csv
import json
import os
import sys

import pytest

from tests.conftest import ROOT, run_study

TINY = {"DATASET": "digits", "SEEDS": "0 1", "PRETRAIN_EPOCHS": "2", "TRAIN_LIMIT": "256", "PRUNE_EPOCHS": "1",
        "ONESHOT_LEVELS": "0.5 0.8 0.9 0.95", "ITER_LEVELS": "2", "ITER_EPOCHS": "1", "FINAL_EPOCHS": "1",
        "ALLOCATORS": "rl", "EPISODES": "2", "MINI_STEPS": "2", "SALIENCY_BATCHES": "2",
        "SINGLE_LAYER_SEEDS": "0", "EXTRA_ARGS": "--batch_size 64"}


def _run(tmp_path):
    return run_study("cifar10_cpu.sh", tmp_path, TINY, timeout=900)


@pytest.mark.slow
def test_study_script_on_digits(tmp_path):
    out = _run(tmp_path)
    res = tmp_path / "results"
    for name in ("report.md", "report.png", "report.json", "budgets.md", "timings.csv", "ssim_vs_gain.png",
                 "knee_lamp_oneshot.png", "knee_glob_iterative.json"):
        assert (res / name).is_file(), name
    knee = json.load(open(res / "knee_lamp_oneshot.json"))
    levels = sorted(r["sparsity"] for r in knee["levels"])
    assert len(levels) == 4
    # the starts: the sparsest level, and the level just past the knee when that is another one
    report = json.load(open(res / "report.json"))
    starts = {round(g["start_sparsity"], 4) for g in report["groups"]}
    assert round(levels[-1], 4) in starts
    if knee["just_past_knee"] and knee["just_past_knee"]["sparsity"] < levels[-1]:
        assert round(knee["just_past_knee"]["sparsity"], 4) in starts
    for g in report["groups"]:
        # every arm ends at the next level of the curve and is compared with the direct arm there (2 seeds)
        target = max(s for s in levels if s < g["start_sparsity"] - 1e-6)
        assert g["final_sparsity"] == pytest.approx(target, abs=5e-4)
        assert g["n"] == 2 and g["direct_n"] == 2 and "welch_p" in g and "ci_low" in g
    arms = {(round(g["start_sparsity"], 4), g["allocator"], g["init"]) for g in report["groups"]}
    for s in starts:
        assert (s, "rl", "reference") in arms
        assert any(k[0] == s and k[2] == "zero" for k in arms)  # init zero for the best arm
    budgets = open(res / "budgets.md").read()
    if knee["knee"]:  # the single-layer analysis runs at the knee itself
        assert f"single-layer analysis at {round(knee['knee']['sparsity'], 4)}:" in budgets
    assert "lamp oneshot:" in budgets and "Pearson r" in budgets
    stages = [r["stage"] for r in csv.DictReader(open(res / "timings.csv"))]
    assert "pretrain" in stages and "single_layer" in stages and "report" in stages
    # a second invocation skips every finished stage and rewrites only the report
    again = _run(tmp_path)
    assert "pretrain: done before, skipped" in again
    assert "regrowth_oneshot.py" not in again and "prune_unstructure.py" not in again
    assert "[study] wrote" in out and "[study] wrote" in again


def test_study_plan_decisions(capsys):
    """The study's starts, regrowth step and single-layer start from a boundary file, checked by hand."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import study_plan

    levels = [{"sparsity": s, "path": f"m_{s}.pth"} for s in (0.5, 0.9, 0.95, 0.98)]
    past = {"levels": levels, "just_past_knee": {"sparsity": 0.95}, "knee": {"sparsity": 0.9, "path": "m_0.9.pth"}}
    assert study_plan.regrowth_starts(past) == [(0.95, "m_0.95.pth", 0.9), (0.98, "m_0.98.pth", 0.95)]
    assert study_plan.single_layer_start(past) == (0.9, "m_0.9.pth")
    # knee at the sparsest level: one start; no knee: the single-layer analysis takes the first start
    last = {"levels": levels, "just_past_knee": {"sparsity": 0.98}, "knee": None}
    assert study_plan.regrowth_starts(last) == [(0.98, "m_0.98.pth", 0.95)]
    assert study_plan.single_layer_start(last) == (0.98, "m_0.98.pth")
    study_plan.main(["step", "0.98", "0.97"])
    assert capsys.readouterr().out == "0.01\n"  # not 0.010000000000000009
    report = {"best_allocator": {"runs/a/m_0.95.pth": "greedy", os.path.abspath("m_0.98.pth"): "rl"}}
    assert study_plan.best_allocator(report, "m_0.98.pth") == "rl"
