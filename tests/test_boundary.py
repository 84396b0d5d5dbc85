"""Boundary estimation: knees of synthetic curves, the last point, bootstrap intervals, device budgets."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.conftest import prepare_work_dir, run_script
from utils.boundary import (DeviceLimits, bootstrap_tolerance, find_knees, regrowth_room, residual_knee,
                            storage_bytes, tolerance_knee, two_segment_knee)
from utils.masks import add_masks

XS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.96, 0.99]


def curve(x, knee=0.9, top=90.0, slope=300.0):
    return [top if v <= knee else top - slope * (v - knee) for v in x]


def test_each_method_finds_a_known_knee():
    ys = curve(XS)
    knees = find_knees(XS, ys, dense_acc=90.0, tolerance=1.0)
    assert XS[knees.two_segment] == 0.9  # the break of the two lines
    assert XS[knees.tolerance] == 0.9  # 0.93 is already 9 points down
    assert XS[knees.residual] == 0.93  # the first point that leaves the line
    left, right = knees.two_segment_slopes
    assert abs(left) < 1e-6 and right == pytest.approx(-300.0)


def test_the_last_point_is_tested():
    xs = XS[:7] + [0.95]
    ys = [90.0, 90.1, 89.9, 90.0, 90.1, 89.9, 90.0, 70.0]  # only the last point drops
    assert residual_knee(xs, ys) == len(xs) - 1  # the published loop stopped one point early
    assert two_segment_knee(xs, ys)[0] == len(xs) - 2


def test_no_knee_on_a_straight_line():
    xs = [0.1 * i for i in range(1, 9)]
    assert residual_knee(xs, [95 - 2 * x for x in xs]) is None
    assert tolerance_knee(xs, [80.0] * 8, dense_acc=95.0, tolerance=1.0) is None


def test_bootstrap_interval_over_seeds():
    rng = np.random.default_rng(0)
    truth = curve(XS)
    levels = [(x, list(y + rng.normal(0, 0.2, 5))) for x, y in zip(XS, truth)]
    lo, hi, point = bootstrap_tolerance(levels, [90.0, 90.1, 89.9], tolerance=1.0, samples=500)
    assert point == 0.9 and lo <= 0.9 <= hi
    noisy = [(x, list(y + rng.normal(0, 3.0, 3))) for x, y in zip(XS, truth)]
    lo2, hi2, _ = bootstrap_tolerance(noisy, [90.0, 92.0, 88.0], tolerance=1.0, samples=500)
    assert hi2 - lo2 >= hi - lo  # more seed noise, a wider interval


def test_storage_bytes_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(8, 3))
    add_masks(model)
    with torch.no_grad():
        model[0].weight_mask.view(-1)[:9] = 0  # 9 of 18 conv weights pruned
        model[2].weight_mask.view(-1)[:20] = 0  # 20 of 24 linear weights pruned
    nnz = 9 + 4
    dense_rest = 3 * 4  # the linear bias, stored dense
    assert storage_bytes(model, "bitmask") == nnz * 4 + math.ceil(18 / 8) + math.ceil(24 / 8) + dense_rest
    assert storage_bytes(model, "csr") == nnz * 8 + (2 + 1) * 4 + (3 + 1) * 4 + dense_rest
    assert storage_bytes(model, "bitmask", value_bytes=2) == nnz * 2 + 3 + 3 + 3 * 2


@pytest.fixture(scope="module")
def curve_dir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("boundary"))
    data = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "256", "--batch_size", "64"]
    prepare_work_dir(wd, data, 2, ["--sparsity", "0.5", "--iter_end", "5", "--finetune_steps", "2", "--pruner", "glob"])
    return os.path.join(wd, "resnet20", "iterative")


@pytest.mark.slow
def test_find_drop_point_cli_and_budgets_at_the_boundary(curve_dir):
    proc = run_script("find_drop_point.py", ["--model_path", curve_dir, "--dataset", "digits", "--tolerance", "100"])
    assert "knee (two_segment)" in proc.stdout and os.path.getsize(os.path.join(curve_dir, "boundary.png")) > 1000
    rows = list(csv.DictReader(open(os.path.join(curve_dir, "boundary.csv"))))
    assert len(rows) == 5
    summary = json.load(open(os.path.join(curve_dir, "boundary.json")))
    knee = summary["knee"]
    assert knee["rule"] == "two_segment" and knee["sparsity"] == summary["knees"]["two_segment"]["sparsity"]
    past = summary["just_past_knee"]
    # just past the knee = the least sparse level above it, and it is one of the curve's checkpoints
    assert past is None or past["sparsity"] == min(r["sparsity"] for r in summary["levels"]
                                                    if r["sparsity"] > knee["sparsity"])
    assert past is None or os.path.isfile(past["path"])
    # the non-zero count of the 0.875 level: exactly at the limit it fits, one below it does not
    total = 270_896
    nnz = total - round(0.5 * total)
    for _ in range(2):
        nnz -= round(0.5 * nnz)
    args = ["--model_path", curve_dir, "--dataset", "digits", "--tolerance", "100", "--max_nonzero_params"]
    at = run_script("find_drop_point.py", args + [str(nnz)]).stdout
    assert f"sparsity 0.8750: {nnz:>10,} non-zero" in at and "fits" in at.split("sparsity 0.8750:")[1].splitlines()[0]
    below = run_script("find_drop_point.py", args + [str(nnz - 1)]).stdout
    assert "fits" not in below.split("sparsity 0.8750:")[1].splitlines()[0]
    assert "python regrowth_oneshot.py --m_name resnet20 --initial_ckpt" in at or "prune further" in at


@pytest.mark.slow
def test_evaluation_script_knee_flag(curve_dir):
    proc = run_script("test_unstructure_regrowth_model.py", ["--model_path", curve_dir, "--dataset", "digits",
                                                             "--train_limit", "256", "--knee", "--tolerance", "100"])
    assert "knee (two_segment)" in proc.stdout and "knee (residual)" in proc.stdout
    summary = json.load(open(os.path.join(curve_dir, "boundary.json")))
    assert summary["metric"] == "test_acc" and len(summary["levels"]) == 5
    bad = run_script("test_unstructure_regrowth_model.py", ["--model_path", summary["levels"][0]["path"], "--knee",
                                                            "--dataset", "digits"], check=False)
    assert bad.returncode == 2 and "--knee needs a folder" in bad.stderr


def test_regrowth_room_is_the_tightest_limit_or_the_knee():
    # a weight level: 1,000 of 10,000 prunable weights alive (sparsity 0.9), 2,000 bytes, 50,000 MACs
    start = {"sparsity": 0.9, "nonzero_params": 1000, "prunable_params": 10000, "bytes": 2000, "macs": 50000,
             "max_macs_per_weight": 64}
    # the knee at 0.85 leaves room for 500 weights; each limit below is tighter
    assert regrowth_room(start, [start], 0.85, DeviceLimits()) == (500, 0.05)
    assert regrowth_room(start, [start], 0.85, DeviceLimits(max_nonzero_params=1200))[0] == 200
    # csr: a weight costs its 4-byte value and a 4-byte column index -> (2,800 - 2,000) / 8
    assert regrowth_room(start, [start], 0.85, DeviceLimits(max_bytes=2800, storage="csr"))[0] == 100
    assert regrowth_room(start, [start], 0.85, DeviceLimits(max_bytes=2800, value_bytes=2))[0] == 400
    assert regrowth_room(start, [start], 0.85, DeviceLimits(max_macs=50000 + 64 * 30 + 10))[0] == 30
    assert regrowth_room(start, [start], 0.85, DeviceLimits(max_nonzero_params=900))[0] == 0  # over already
    # a filter level: 100 dense filters, 10,000 prunable weights -> 100 weights per filter; the densest level's
    # 80,000 MACs -> 800 MACs per filter; latency 0.1 ms per filter from the next less sparse level
    f_start = dict(start, sparsity=0.6, alive_filters=40, latency_ms=2.0)
    f_prev = {"sparsity": 0.5, "macs": 80000, "alive_filters": 50, "latency_ms": 3.0}
    levels = [f_prev, f_start]
    assert regrowth_room(f_start, levels, 0.5, DeviceLimits(), dense_filters=100) == (10, 0.1)
    assert regrowth_room(f_start, levels, 0.4, DeviceLimits(max_nonzero_params=1500), dense_filters=100)[0] == 5
    assert regrowth_room(f_start, levels, 0.4, DeviceLimits(max_macs=50000 + 800 * 7), dense_filters=100)[0] == 7
    assert regrowth_room(f_start, levels, 0.4, DeviceLimits(max_latency_ms=2.35), dense_filters=100)[0] == 3


def test_device_limits_fit_each_limit():
    level = {"nonzero_params": 100, "bytes": 400, "macs": 1e6, "latency_ms": 1.5}
    assert DeviceLimits().fits(level) and not DeviceLimits().any()
    assert DeviceLimits(max_nonzero_params=100, max_bytes=400, max_macs=1e6, max_latency_ms=1.5).fits(level)
    for limit in ({"max_nonzero_params": 99}, {"max_bytes": 399}, {"max_macs": 9.9e5}, {"max_latency_ms": 1.4}):
        assert not DeviceLimits(**limit).fits(level) and DeviceLimits(**limit).any(), limit
