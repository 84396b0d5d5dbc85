"""What the second study needs: training FLOPs on every result, finetune evaluations every K steps and the
N-step checkpoints, mask transplants, the selection criteria, and the arms table with Welch / bootstrap."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats

import prune_unstructure
import regrowth_oneshot
from models import model_loader
from tests.conftest import prepare_work_dir, run_script
from utils.checkpoints import load_checkpoint, model_from_checkpoint
from utils.compute import (ComputeLedger, MacCounter, flops_total, format_mean_flops, images_in_batches,
                           pass_flops)
from utils.costs import model_cost
from utils.masks import add_masks, masked_modules
from utils.records import read_jsonl
from utils.regrowth.kinds import random_selection_generator
from utils.stats import bootstrap_mean_difference, compare_groups

DATA = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "256", "--batch_size", "64",
        "--precision", "fp32"]
TOTAL = 270_896  # prunable weights of resnet20


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("study_caps"))
    return prepare_work_dir(wd, DATA, 2, ["--m_prune", "oneshot", "--oneshot", "0.95", "--finetune_steps", "4"])


def _dense(work):
    return os.path.join(work, "resnet20", "checkpoint", "ckpt.pth")


# ---- FLOPs ------------------------------------------------------------------------------------------

def test_mac_counter_counts_alive_weights_times_output_positions():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2, padding=1),
                        nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    add_masks(net)
    mods = [m for _, m in masked_modules(net)]
    with torch.no_grad():
        mods[0].weight_mask.view(-1)[:10] = 0  # 98 of 108 alive
        mods[1].weight_mask.view(-1)[::2] = 0  # 36 of 72 alive
    counter = MacCounter(net, 8)
    # by hand: 8x8 outputs x 98 weights + 4x4 outputs x 36 weights + 1 x 160 weights
    assert counter(net) == 64 * 98 + 16 * 36 + 160
    assert counter(net) == model_cost(net, 8)["nonzero_macs"]  # weights are non-zero where masks are one
    assert pass_flops(1000, 5, backward=True) == 2 * 1000 * 5 * 3 and pass_flops(1000, 5, backward=False) == 10_000


def test_images_in_batches_counts_a_short_last_batch():
    class Loader:
        batch_size, drop_last = 64, False
        dataset = range(150)

        def __len__(self):
            return 3

    assert images_in_batches(Loader()) == 150 and images_in_batches(Loader(), 2) == 128
    Loader.drop_last = True
    assert images_in_batches(Loader(), 5) == 192


def test_ledger_adds_what_the_start_recorded():
    led = ComputeLedger.starting_from({"training_flops": {"total": 100.0}}, "start.pth")
    led.add_pass("final_finetune", 10, 2, backward=True)
    assert led.record() == {"total": 220.0, "spent": 120.0, "inherited": 100.0, "inherited_from": "start.pth",
                            "stages": {"final_finetune": 120.0}}
    assert ComputeLedger.starting_from({}).total == 0.0  # a dense checkpoint records none


def test_flops_totals_read_every_record_form_and_tables_skip_unknowns():
    assert flops_total({"total": 5.0, "spent": 2.0}) == 5.0  # checkpoint / summary form
    assert flops_total(7) == 7.0  # log-row form
    assert flops_total(None) == 0.0 and math.isnan(flops_total(None, math.nan))
    assert format_mean_flops([1e12, math.nan, 3e12]) == "2e+12"  # the unknown one is left out, not taken as 0
    assert format_mean_flops([math.nan]) == "-"


# ---- --eval_every, --save_at, transplant --------------------------------------------------------------

@pytest.mark.slow
def test_n_step_snapshot_is_the_n_step_run_and_flops_are_exact(work, tmp_path):
    """The 4-step state saved by an 8-step finetune (--save_at 4) is bit for bit what a 4-step finetune ends with,
    and the recorded FLOPs are 6 x the pruned model's non-zero MACs x the images it trained on."""
    runs = {}
    for steps, extra in ((8, ["--save_at", "4", "8"]), (4, [])):
        wd = str(tmp_path / f"s{steps}")
        prune_unstructure.main(prune_unstructure.get_args_parser().parse_args(
            DATA + ["--work_dir", wd, "--dense_ckpt", _dense(work), "--m_prune", "oneshot", "--oneshot", "0.9",
                    "--finetune_steps", str(steps), "--eval_every", "2", "--patience", "100", *extra]))
        runs[steps] = os.path.join(wd, "resnet20", "oneshot")
    snap = load_checkpoint(os.path.join(runs[8], "resnet20_0.9_steps4.pth"))
    short = load_checkpoint(os.path.join(runs[4], "resnet20_0.9.pth"))
    assert snap["state_dict"].keys() == short["state_dict"].keys()
    assert all(torch.equal(snap["state_dict"][k], short["state_dict"][k]) for k in short["state_dict"])
    assert snap["metrics"]["val_acc"] == pytest.approx(short["metrics"]["val_acc"])
    assert snap["metrics"]["test_acc"] == pytest.approx(short["metrics"]["test_acc"])
    assert snap["training_flops"]["total"] == pytest.approx(short["training_flops"]["total"])
    evals = read_jsonl(os.path.join(runs[8], "resnet20_0.9_evals.jsonl"))
    assert [e["steps"] for e in evals] == [2, 4, 6, 8] and [e["images"] for e in evals] == [128, 256, 384, 512]
    model, _ = model_from_checkpoint(os.path.join(runs[4], "resnet20_0.9.pth"), "resnet20")
    macs = MacCounter(model, 32)(model)
    assert short["training_flops"]["total"] == pytest.approx(6 * macs * 4 * 64)
    assert evals[-1]["training_flops"] == pytest.approx(6 * macs * 8 * 64)


def test_save_at_must_lie_on_the_evaluation_grid(work, tmp_path):
    proc = run_script("prune_unstructure.py", DATA + ["--work_dir", str(tmp_path), "--dense_ckpt", _dense(work),
                                                      "--m_prune", "oneshot", "--oneshot", "0.9", "--finetune_steps",
                                                      "8", "--eval_every", "3", "--save_at", "4"], check=False)
    assert proc.returncode == 2 and "multiple of --eval_every" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_transplant_trains_the_source_mask_from_the_dense_weights(work, tmp_path):
    source = os.path.join(work, "resnet20", "oneshot", "resnet20_0.95.pth")
    wd = str(tmp_path / "tp")
    rows = prune_unstructure.main(prune_unstructure.get_args_parser().parse_args(
        DATA + ["--work_dir", wd, "--dense_ckpt", _dense(work), "--mask_from", source, "--finetune_steps", "0"]))
    out = load_checkpoint(rows[0]["path"])
    src, dense = load_checkpoint(source), load_checkpoint(_dense(work))
    masks = [k for k in src["state_dict"] if k.endswith("weight_mask")]
    assert masks and all(torch.equal(out["state_dict"][k], src["state_dict"][k]) for k in masks)
    for k in masks:  # no step taken: the alive weights are the dense ones
        w = k[: -len("_mask")] + "_orig"
        plain = dense["state_dict"].get(w) if w in dense["state_dict"] else dense["state_dict"][k[: -len("_mask")]]
        assert torch.equal(out["state_dict"][w] * out["state_dict"][k], plain * src["state_dict"][k])
    assert out["pruner"] == "transplant" and "/transplant/" in rows[0]["path"]
    assert out["training_flops"]["inherited"] == pytest.approx(src["training_flops"]["total"])
    assert out["training_flops"]["inherited_from"] == source


# ---- selection --------------------------------------------------------------------------------------

def _regrown_positions(start, final):
    out = {}
    for k, m in start["state_dict"].items():
        if k.endswith("weight_mask"):
            grown = (final["state_dict"][k] > 0) & (m == 0)
            if grown.any():
                out[k[: -len(".weight_mask")]] = set(grown.flatten().nonzero().flatten().tolist())
    return out


def _top_pruned(scores, mask, k):
    s = scores.flatten().double().clone()
    s[mask.flatten() > 0] = -math.inf
    return set(torch.topk(s, k).indices.tolist())


def _naive_pruned_gradient(model, loader, batches):
    """|mean over batches of dL_b/dw| at each layer's effective weight, on a plain (mask-free) copy."""
    plain = model_loader("resnet20")
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("weight_orig"):
            state[k[: -len("_orig")]] = v * model.state_dict()[k[: -len("_orig")] + "_mask"]
        elif not k.endswith("weight_mask"):
            state[k] = v
    plain.load_state_dict(state)
    plain.eval()
    loader.set_epoch(0)
    grads, n = {}, 0
    for i, (x, y) in enumerate(loader):
        if i >= batches:
            break
        plain.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        for name, m in plain.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                grads[name] = grads.get(name, 0) + m.weight.grad.detach().clone()
        n += 1
    return {k: (g / n).abs() for k, g in grads.items()}


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["magnitude", "random", "gradient"])
def test_each_selection_restores_what_an_independent_computation_picks(work, tmp_path, selection):
    save = str(tmp_path / "rg")
    summary = regrowth_oneshot.main(regrowth_oneshot.get_args_parser().parse_args(
        DATA + ["--work_dir", work, "--save_dir", save, "--model_sparsity", "0.95", "--allocator", "uniform",
                "--ssim_threshold", "0.6", "--saliency_batches", "2", "--ssim_num_batches", "2",
                "--mini_finetune_steps", "1", "--selection", selection, "--finetune_steps", "0", "--seed", "3"]))
    start_path = os.path.join(work, "resnet20", "oneshot", "resnet20_0.95.pth")
    start = load_checkpoint(start_path)
    final = load_checkpoint(os.path.join(save, "resnet20", "oneshot", "0.95_uniform", "final_finetuned.pth"))
    got = _regrown_positions(start, final)
    alloc = {n: k for n, k in summary["best_allocation"].items() if k > 0}
    assert set(got) == set(alloc) and all(len(got[n]) == alloc[n] for n in alloc)
    dense = load_checkpoint(_dense(work))["state_dict"]
    if selection == "gradient":
        from utils import cli
        from utils.hparams import DataHparams

        args = regrowth_oneshot.get_args_parser().parse_args(DATA + ["--work_dir", work, "--seed", "3"])
        data = cli.build_data(DataHparams.from_args(args), args.seed, torch.device("cpu"), "resnet20")
        sparse, _ = model_from_checkpoint(start_path, "resnet20")
        expected_scores = _naive_pruned_gradient(sparse, data.train, 2)
    for n, k in alloc.items():
        mask = start["state_dict"][f"{n}.weight_mask"]
        if selection == "magnitude":
            scores = dense[f"{n}.weight"].abs()
        elif selection == "random":
            scores = torch.rand(mask.shape, generator=random_selection_generator(3, n))
        else:
            scores = expected_scores[n]
        assert got[n] == _top_pruned(scores, mask, k), n
    assert summary["selection"] == selection


def test_saliency_proxy_refuses_another_selection(work):
    proc = run_script("regrowth_oneshot.py", DATA + ["--work_dir", work, "--save_dir", "unused", "--model_sparsity",
                                                     "0.95", "--reward_proxy", "saliency", "--selection", "magnitude"],
                      check=False)
    assert proc.returncode == 2 and "--selection saliency" in proc.stderr and "Traceback" not in proc.stderr


# ---- regrowth FLOPs, constant final finetune --------------------------------------------------------

@pytest.mark.slow
def test_regrowth_records_every_stage_of_its_training_flops(work, tmp_path):
    save = str(tmp_path / "rg")
    summary = regrowth_oneshot.main(regrowth_oneshot.get_args_parser().parse_args(
        DATA + ["--work_dir", work, "--save_dir", save, "--model_sparsity", "0.95", "--allocator", "random",
                "--num_epochs", "2", "--ssim_threshold", "0.6", "--saliency_batches", "2", "--ssim_num_batches", "2",
                "--mini_finetune_steps", "2", "--finetune_steps", "3", "--finetune_schedule", "constant",
                "--eval_every", "1", "--init_strategy", "reference"]))
    out_dir = os.path.join(save, "resnet20", "oneshot", "0.95_random")
    rec = summary["training_flops"]
    start = load_checkpoint(os.path.join(work, "resnet20", "oneshot", "resnet20_0.95.pth"))
    assert rec["inherited"] == pytest.approx(start["training_flops"]["total"])
    assert set(rec["stages"]) == {"ssim", "saliency", "search", "final_finetune"}
    dense, _ = model_from_checkpoint(_dense(work), "resnet20")
    add_masks(dense)
    counter = MacCounter(dense, 32)
    final = load_checkpoint(os.path.join(out_dir, "final_finetuned.pth"))
    final_model, _ = model_from_checkpoint(os.path.join(out_dir, "final_finetuned.pth"), "resnet20")
    assert rec["stages"]["final_finetune"] == pytest.approx(6 * counter(final_model) * 3 * 64)
    assert rec["stages"]["saliency"] == pytest.approx(6 * counter(dense) * 2 * 64)
    episodes = read_jsonl(os.path.join(out_dir, "episodes.jsonl"))
    assert rec["stages"]["search"] == pytest.approx(sum(r["flops"] for r in episodes)) and rec["stages"]["search"] > 0
    assert final["training_flops"]["total"] == pytest.approx(rec["total"])
    evals = read_jsonl(os.path.join(out_dir, "final_finetune_evals.jsonl"))
    assert [e["steps"] for e in evals] == [1, 2, 3]
    assert summary["final_finetune_schedule"] == "constant" and summary["final_finetune_steps"] == 3


# ---- statistics and the arms table ----------------------------------------------------------------

def test_compare_groups_matches_scipy_and_covers_the_difference():
    a, b = [71.2, 70.4, 72.0], [69.0, 69.8, 68.7]
    c = compare_groups(a, b)
    assert c["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert c["welch_p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert c["ci_low"] < c["diff"] < c["ci_high"]
    # every resample's difference lies between the extreme possible means
    assert min(a) - max(b) <= c["ci_low"] and c["ci_high"] <= max(a) - min(b)
    low, high = bootstrap_mean_difference([1.0, 1.0], [0.0, 0.0])
    assert low == high == 1.0
    assert math.isnan(compare_groups([1.0], [2.0])["welch_p"])


@pytest.mark.slow
def test_report_arms_table_and_compute_figure(work, tmp_path):
    paths = {}
    for seed in (0, 1):
        wd = str(tmp_path / f"d{seed}")
        prune_unstructure.main(prune_unstructure.get_args_parser().parse_args(
            DATA + ["--work_dir", wd, "--dense_ckpt", _dense(work), "--m_prune", "oneshot", "--oneshot", "0.9",
                    "--finetune_steps", "2", "--seed", str(seed), "--save_at", "1", "--eval_every", "1"]))
        paths[seed] = os.path.join(wd, "resnet20", "oneshot")
    out = str(tmp_path / "rep" / "report.md")
    os.makedirs(os.path.dirname(out))
    run_script("report.py", ["--m_name", "resnet20", "--work_dir", work, "--out", out, "--metric", "val_acc",
                             "--arms", f"one step={paths[0]}/resnet20_0.9_steps1.pth,{paths[1]}/resnet20_0.9_steps1.pth",
                             f"two steps={tmp_path}/d*/resnet20/oneshot/resnet20_0.9.pth",
                             "--baseline_arms", "one step"])
    rep = json.load(open(str(tmp_path / "rep" / "report.json")))
    arms = {a["arm"]: a for a in rep["arms"]}
    two = [load_checkpoint(os.path.join(paths[s], "resnet20_0.9.pth")) for s in (0, 1)]
    one = [load_checkpoint(os.path.join(paths[s], "resnet20_0.9_steps1.pth")) for s in (0, 1)]
    assert arms["two steps"]["n"] == 2
    assert arms["two steps"]["training_flops_mean"] == pytest.approx(np.mean([c["training_flops"]["total"] for c in two]))
    assert arms["two steps"]["training_flops_mean"] == pytest.approx(2 * arms["one step"]["training_flops_mean"])
    diff = arms["two steps"]["vs"]["one step"]["val_acc"]["diff"]
    assert diff == pytest.approx(np.mean([c["metrics"]["val_acc"] for c in two])
                                 - np.mean([c["metrics"]["val_acc"] for c in one]))
    text = open(out).read()
    assert "## Arms" in text and "| two steps | 2 |" in text and "report_compute.png" in text
    assert os.path.getsize(str(tmp_path / "rep" / "report_compute.png")) > 1000


def test_report_arms_bad_input_is_one_line(work, tmp_path):
    proc = run_script("report.py", ["--m_name", "resnet20", "--work_dir", work, "--out", str(tmp_path / "r.md"),
                                    "--arms", f"x={tmp_path}/missing.pth"], check=False)
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("report.py", ["--m_name", "resnet20", "--work_dir", work, "--out", str(tmp_path / "r.md"),
                                    "--arms", f"x={_dense(work)}", "--baseline_arms", "y"], check=False)
    assert proc.returncode == 2 and "not among the --arms" in proc.stderr



def test_filter_regrowth_refuses_a_weight_selection():
    import regrowth_structure_oneshot
    from utils.errors import BridgeError
    from utils.regrowth.hparams import RegrowthHparams

    args = regrowth_structure_oneshot.get_args_parser().parse_args(
        ["--m_name", "resnet20", "--initial_ckpt", "unused.pth", "--selection", "magnitude"])
    with pytest.raises(BridgeError, match="--regrowth_score"):
        RegrowthHparams.from_args(args, structured=True)
