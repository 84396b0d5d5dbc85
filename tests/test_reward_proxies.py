"""Reward proxies: what each one changes in the model, what it measures, and that it ranks allocations."""
import math

import pytest
import torch
import torch.nn as nn

from tests.conftest import TinyNet
from utils.masks import add_masks, masked_modules
from utils.pruners import PRUNERS
from utils.regrowth.weights import WeightRegrower, dense_reference_weights
from utils.regrowth.env import RegrowthEnv
from utils.regrowth.proxies import (BatchNormProxy, GradientProxy, MiniFinetuneProxy, SaliencyProxy,
                                  make_reward_proxy, recalibrate_batchnorm)
from utils.runtime import Precision
from utils.saliency import weight_saliency
from utils.training import clone_state, evaluate


def _batches(n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g) * 2 + 1, torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def test_bn_recalibration_changes_only_running_statistics_and_equals_the_cumulative_batch_average():
    torch.manual_seed(0)
    model = add_masks(TinyNet())
    PRUNERS["glob"](model, 0.7)
    before = clone_state(model)
    data = _batches(5)
    used = recalibrate_batchnorm(model, data, 3, "cpu", Precision())
    assert used == 3 and model.training and model.bn1.training  # the mode it came in
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # weights, masks, BN affine parameters: bit-identical; only running statistics moved
    assert changed and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
                           for k in changed)
    assert all(model.get_submodule(n).momentum == 0.1 for n in ("bn1", "bn2", "bn3"))  # restored
    # independent: conv1's output over each of the 3 batches, per-channel mean / unbiased var, averaged
    means, variances = [], []
    with torch.no_grad():
        for x, _ in data[:3]:
            z = model.conv1(x).transpose(0, 1).reshape(8, -1)
            means.append(z.mean(1))
            variances.append(z.var(1, unbiased=True))
    assert torch.allclose(model.bn1.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert torch.allclose(model.bn1.running_var, torch.stack(variances).mean(0), rtol=1e-4)
    assert int(model.bn1.num_batches_tracked) == 3


def test_bn_recalibration_keeps_dropout_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.9), nn.BatchNorm2d(4))
    data = _batches(2)
    recalibrate_batchnorm(model, data, 2, "cpu", Precision())
    with torch.no_grad():
        z = torch.cat([model[0](x) for x, _ in data]).transpose(0, 1).reshape(4, 2, -1)
    # without dropout in the statistics pass: the mean of the two batch means of the conv output
    assert torch.allclose(model[2].running_mean, z.mean(2).mean(1), atol=1e-5)


def _digit_net():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained on bundled digits until it classifies well, pruned hard without finetune."""
    from data.data_loader import data_loader

    data = data_loader(dataset="digits", batch_size=64, seed=0, download=False)
    torch.manual_seed(0)
    dense = _digit_net()
    opt = torch.optim.Adam(dense.parameters(), lr=3e-3)
    for epoch in range(10):
        data.train.set_epoch(epoch)
        for x, y in data.train:
            opt.zero_grad()
            nn.functional.cross_entropy(dense(x), y).backward()
            opt.step()
    dense_acc, _ = evaluate(dense, data.val, "cpu")
    assert dense_acc > 70
    dense = add_masks(dense)
    sparse = add_masks(_digit_net())
    sparse.load_state_dict(dense.state_dict())
    PRUNERS["glob"](sparse, 0.9)
    names = [n for n, _ in masked_modules(sparse)]
    saliency = weight_saliency(dense, data.train, names, "cpu", max_batches=4)
    regrower = WeightRegrower(saliency, dense_reference_weights(dense, names), "reference")
    caps = {n: int((m.weight_mask == 0).sum()) for n, m in masked_modules(sparse)}
    return data, sparse, regrower, caps


def _env(trained, proxy, metric_reference=0.0):
    data, sparse, regrower, _ = trained
    work = add_masks(_digit_net())
    work.load_state_dict(sparse.state_dict())
    return RegrowthEnv(work, clone_state(sparse), regrower, data.train, data.val, "cpu", Precision(), proxy,
                       lambda s: metric_reference, 0.0, 10_000, 0)


def _pruned_gradient(trained):
    from utils.saliency import weight_gradient

    data, sparse, _, caps = trained
    grads = weight_gradient(sparse, data.train, list(caps), "cpu", max_batches=3)
    return {n: g * (sparse.get_submodule(n).weight_mask == 0) for n, g in grads.items()}


@pytest.mark.parametrize("make", [lambda t: BatchNormProxy(4), lambda t: BatchNormProxy(4, "loss"),
                                  lambda t: SaliencyProxy(), lambda t: MiniFinetuneProxy(6, "cosine"),
                                  lambda t: GradientProxy(_pruned_gradient(t))],
                         ids=["bn-acc", "bn-loss", "saliency", "steps", "gradient"])
def test_each_proxy_ranks_a_clearly_better_allocation_above_a_clearly_worse_one(trained, make):
    """Restoring 70% of every layer's pruned weights (dense values) against restoring almost nothing,
    with the budget bonus off: the score alone must tell them apart."""
    _, _, _, caps = trained
    good = {n: int(0.7 * c) for n, c in caps.items()}
    bad = {"13": 1}  # one weight of the classifier
    env = _env(trained, make(trained))
    better, worse = env.evaluate(good, sum(good.values()), 0), env.evaluate(bad, sum(good.values()), 1)
    assert better.reward > worse.reward + 1e-3


def test_bn_proxy_reward_metrics_and_restored_share_against_independent_computations(trained):
    data, sparse, regrower, caps = trained
    alloc = {n: c // 3 for n, c in caps.items()}
    # acc metric: (acc - reference) / 100; loss metric: start's loss - loss
    acc_env, loss_env = _env(trained, BatchNormProxy(4), 20.0), _env(trained, BatchNormProxy(4, "loss"))
    r_acc, r_loss = acc_env.evaluate(alloc, 100, 0), loss_env.evaluate(alloc, 100, 0)
    start_loss = evaluate(sparse, data.val, "cpu")[1]
    assert r_acc.reward == pytest.approx((r_acc.val_acc - 20.0) / 100)
    assert r_loss.reference_loss == pytest.approx(start_loss)
    assert r_loss.reward == pytest.approx(start_loss - r_loss.val_loss)
    assert r_acc.val_acc == r_loss.val_acc  # the same measurement, scored two ways
    # the regrown weights are the ones the proxy scored: the BN-recalibrated model differs from the
    # regrown one only in running statistics
    assert all(torch.equal(r_acc.pre_state[k], r_acc.post_state[k]) for k in r_acc.pre_state
               if not k.rsplit(".", 1)[1].startswith(("running_", "num_batches")))
    # saliency share: saliency at the positions whose mask turned on / saliency of the whole layers
    s_env = _env(trained, SaliencyProxy())
    res = s_env.evaluate(alloc, 100, 0)
    turned_on = {n: (res.pre_state[f"{n}.weight_mask"] > 0) & (sparse.get_submodule(n).weight_mask == 0)
                 for n in caps}
    restored = sum(float(regrower.saliency[n][turned_on[n]].sum()) for n in caps)
    total = sum(float(regrower.saliency[n].sum()) for n in caps)
    assert res.restored_share == pytest.approx(restored / total, rel=1e-6)
    assert math.isnan(res.val_acc) and res.reward == pytest.approx(res.restored_share)


def test_gradient_proxy_scores_the_freed_share_of_an_independent_gradient(trained):
    """weight_gradient equals the gradient of a plain copy holding the effective weights (pruned positions
    included), and the proxy's share is the freed positions' part of it."""
    from utils.saliency import weight_gradient

    data, sparse, regrower, caps = trained
    names = list(caps)
    grads = weight_gradient(sparse, data.train, names, "cpu", max_batches=3)
    plain = _digit_net()
    plain.load_state_dict({k.replace("weight_orig", "weight"): (v * sparse.state_dict()[k.replace("orig", "mask")]
                                                               if k.endswith("weight_orig") else v)
                           for k, v in sparse.state_dict().items() if not k.endswith("weight_mask")})
    plain.eval()
    data.train.set_epoch(0)
    losses = [nn.functional.cross_entropy(plain(x), y) for (x, y), _ in zip(data.train, range(3))]
    naive = torch.autograd.grad(torch.stack(losses).mean(), [plain.get_submodule(n).weight for n in names])
    for n, g in zip(names, naive):
        assert torch.allclose(grads[n], g.abs(), rtol=1e-4, atol=1e-6)
        assert (grads[n][sparse.get_submodule(n).weight_mask == 0] > 0).any()  # pruned positions have gradients
    pruned = {n: grads[n] * (sparse.get_submodule(n).weight_mask == 0) for n in names}
    env = _env(trained, GradientProxy(pruned))
    alloc = {n: c // 4 for n, c in caps.items()}
    res = env.evaluate(alloc, 100, 0)
    freed = {n: (res.pre_state[f"{n}.weight_mask"] > 0) & (sparse.get_submodule(n).weight_mask == 0) for n in names}
    expected = sum(float(pruned[n][freed[n]].sum()) for n in names) / sum(float(p.sum()) for p in pruned.values())
    assert res.restored_share == pytest.approx(expected, rel=1e-6)


def test_make_reward_proxy_rejects_bad_settings():
    with pytest.raises(Exception, match="reward proxy"):
        make_reward_proxy("zero-cost")
    with pytest.raises(Exception, match="reward metric"):
        make_reward_proxy("bn", metric="top5")
    with pytest.raises(Exception, match="bn_batches"):
        make_reward_proxy("bn", bn_batches=0)
    with pytest.raises(Exception, match="steps"):
        make_reward_proxy("steps")
    with pytest.raises(Exception, match="unstructured"):
        make_reward_proxy("gradient")
    with pytest.raises(Exception, match="reward proxy"):
        RegrowthEnv(None, None, None, None, None, "cpu", Precision(), 5, None, 0.0, 1, 0)


def test_bootstrap_spearman_interval():
    """Monotone data: [1, 1]; independent data, n = 200: contains 0 and is about as wide as Fisher's
    approximation 2 * 1.96 * 1.06 / sqrt(n - 3) says."""
    from utils.stats import bootstrap_spearman

    x = list(range(12))
    assert bootstrap_spearman(x, [v ** 3 for v in x], 500) == pytest.approx((1.0, 1.0))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, generator=g).tolist(), torch.randn(200, generator=g).tolist()
    lo, hi = bootstrap_spearman(a, b, 1000)
    assert lo < 0 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 1.06 / math.sqrt(197), rel=0.3)


@pytest.mark.slow
def test_proxy_fidelity_bench_end_to_end_on_digits(tmp_path):
    """The benchmark through its CLI: every proxy scored on every allocation, rows reused on a rerun,
    the table / JSON / figure written."""
    import json
    import os

    from tests.conftest import prepare_work_dir, run_script
    from utils.records import read_jsonl

    data = ["--dataset", "digits", "--m_name", "resnet20", "--train_limit", "128", "--batch_size", "64"]
    wd = prepare_work_dir(str(tmp_path / "wd"), data, 1, ["--m_prune", "oneshot", "--oneshot", "0.95",
                                                          "--finetune_steps", "2"])
    rows, out = str(tmp_path / "rows.jsonl"), str(tmp_path / "out")
    args = data + ["--work_dir", wd, "--model_sparsity", "0.95", "--ssim_threshold", "0.6", "--saliency_batches", "2",
                   "--ssim_num_batches", "2", "--init_strategy", "reference", "--allocations", "5",
                   "--long_epochs", "0.5", "--long_seeds", "2", "--proxy_steps", "1", "--proxy_seeds", "2",
                   "--bn_batch_counts", "1", "--rows", rows, "--out", out, "--precision", "fp32", "--bootstrap", "50"]
    first = run_script("bench/proxy_fidelity.py", args)
    written = read_jsonl(rows)
    # 5 allocations x (2 steps seeds + bn + saliency + gradient + 2 long seeds)
    assert len(written) == 5 * 7 and {r["label"] for r in written} >= {"uniform", "proportional", "greedy"}
    summary = tmp_path / "summary.json"  # a regrowth run's best allocation, scored beside the drawn ones
    summary.write_text(json.dumps({"allocator": "rl", "best_allocation": written[0]["allocation"]}))
    again = run_script("bench/proxy_fidelity.py", args + ["--score_allocations", str(summary)])
    assert "35 evaluations reused" in again.stdout and len(read_jsonl(rows)) == 42
    assert "rl best" in again.stdout and "would rank #" in again.stdout
    fidelity = json.load(open(os.path.join(out, "fidelity.json")))
    assert fidelity["n"] == 5 and len(fidelity["scored_runs"]) == 1
    assert os.path.getsize(os.path.join(out, "fidelity.png")) > 1000
    assert "| proxy | rho |" in open(os.path.join(out, "fidelity.md")).read()
    assert "Spearman rho" in first.stdout


def test_first_vs_last_windows_and_welch_test_against_scipy():
    from scipy import stats as sps

    from utils.stats import first_vs_last

    rising = [0.01 * i for i in range(10)]
    out = first_vs_last(rising, window=3)
    assert out["window"] == 3 and out["first_mean"] == pytest.approx(0.01) and out["last_mean"] == pytest.approx(0.08)
    t, p = sps.ttest_ind(rising[-3:], rising[:3], equal_var=False)
    assert out["welch_t"] == pytest.approx(t) and out["welch_p"] == pytest.approx(p)
    assert first_vs_last(rising, window=50)["window"] == 5  # never overlapping halves
    assert first_vs_last([1.0, 2.0, 3.0])["window"] == 1 and "welch_p" not in first_vs_last([1.0, 2.0, 3.0])
