"""Training loop: step budgets, best-validation selection, NaN detection."""
import pytest
import torch

from utils.errors import NonFiniteLossError
from utils.runtime import Precision
from utils.training import adamw_finetune_optimizer, evaluate, finetune, train_one_epoch, training_forward


def _toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # learnable
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def test_step_budget_is_exact(tiny_net):
    train = _toy_data()
    opt = adamw_finetune_optimizer(tiny_net)
    res = finetune(tiny_net, train, _toy_data(32, 1), opt, "cpu", steps=8, verbose=False)
    assert res.steps == 8 and res.epochs == 2  # 6 batches per epoch: one full and one partial epoch


def test_best_validation_state_is_restored(tiny_net):
    train, val = _toy_data(), _toy_data(48, 1)
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.5)
    res = finetune(tiny_net, train, val, opt, "cpu", epochs=6, verbose=False)
    best = max(h["val_acc"] for h in res.history)
    assert res.best_val_acc == best
    assert evaluate(tiny_net, val, "cpu")[0] == pytest.approx(best)
    assert res.history[res.best_epoch - 1]["val_acc"] == best


def test_initial_state_kept_when_training_never_beats_it(tiny_net):
    start = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    # an entry accuracy no training can beat: the incoming state (weights and BN statistics) comes back
    res = finetune(tiny_net, _toy_data(), _toy_data(48, 1), opt, "cpu", epochs=2, verbose=False,
                   initial_val_acc=100.0)
    assert res.best_epoch == 0 and res.best_val_acc == 100.0
    assert all(torch.equal(v, start[k]) for k, v in tiny_net.state_dict().items())


def test_nan_loss_stops_training(tiny_net):
    bad = [(torch.full((16, 3, 8, 8), float("nan")), torch.zeros(16, dtype=torch.long))] * 30
    with pytest.raises(NonFiniteLossError):
        train_one_epoch(tiny_net, bad, torch.optim.SGD(tiny_net.parameters(), lr=0.1), "cpu")


@pytest.mark.slow
def test_compiled_training_matches_eager_and_respects_masks(tiny_net):
    """--compile: same steps as eager (fp32), masks edited in place after compiling still apply, one graph
    for the full batch (the partial last batch runs eagerly), state_dict keys unchanged."""
    import torch._dynamo

    from utils.masks import add_masks, masked_modules

    add_masks(tiny_net)
    for _, m in masked_modules(tiny_net):
        m.weight_mask.copy_((torch.rand_like(m.weight_mask) > 0.5).float())
    twin = add_masks(type(tiny_net)())  # eager reference, identical start
    twin.load_state_dict(tiny_net.state_dict())
    keys = list(tiny_net.state_dict())
    data = _toy_data(88)  # five batches of 16 and one of 8
    eager_p, compiled_p = Precision(), Precision(compile=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for epoch in range(2):
        if epoch == 1:  # prune more, in place, between epochs: the compiled graph must see it
            for net in (tiny_net, twin):
                mask = masked_modules(net)[1][1].weight_mask
                mask.view(-1)[: mask.numel() // 2] = 0
        torch.manual_seed(epoch)
        a = train_one_epoch(twin, data, torch.optim.SGD(twin.parameters(), lr=0.1), "cpu", eager_p)
        b = train_one_epoch(tiny_net, data, torch.optim.SGD(tiny_net.parameters(), lr=0.1), "cpu", compiled_p)
        assert b.loss == pytest.approx(a.loss, rel=1e-4, abs=1e-5) and b.steps == a.steps == 6
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert list(tiny_net.state_dict()) == keys
    for (_, m), (_, r) in zip(masked_modules(tiny_net), masked_modules(twin)):
        assert torch.allclose(m.weight_orig, r.weight_orig, atol=1e-5)
        assert torch.all((m.weight_orig * m.weight_mask)[m.weight_mask == 0] == 0)


def test_compile_flag_and_environment(monkeypatch):
    """--compile (or BRIDGE_COMPILE=1) turns the compiled training path on; off by default."""
    import pretrain
    from utils.runtime import resolve_precision

    monkeypatch.delenv("BRIDGE_COMPILE", raising=False)
    parse = pretrain.get_args_parser().parse_args
    assert not resolve_precision("fp32", "cpu", parse([]).compile).compile
    on = resolve_precision("fp32", "cpu", parse(["--compile"]).compile)
    assert on.compile and on.name == "fp32+channels_last+compile"
    monkeypatch.setenv("BRIDGE_COMPILE", "1")
    assert resolve_precision("fp32", "cpu", parse([]).compile).compile
    net = torch.nn.Linear(2, 2)
    assert training_forward(net, Precision()) is net  # eager unless asked


def test_compile_is_offered_only_where_training_steps_run():
    """--compile exists on every script that trains; the evaluation-only ones (and the fp32-only saliency
    analysis, which also has no --precision) reject it instead of silently ignoring it."""
    import importlib

    def options(module):
        parser = importlib.import_module(module).get_args_parser()
        return {s for a in parser._actions for s in a.option_strings}, parser

    for module in ("pretrain", "prune_unstructure", "prune_structure", "regrowth_oneshot", "regrowth_iterative",
                   "regrowth_structure_oneshot", "regrowth_structure_iterative", "single_layer_regrowth_analysis"):
        assert "--compile" in options(module)[0], module
    for module in ("find_drop_point", "test_unstructure_regrowth_model", "saliency_analysis"):
        opts, parser = options(module)
        assert "--compile" not in opts and "--device" in opts, module
        assert parser.get_default("compile") is False, module
    assert "--precision" not in options("saliency_analysis")[0]
    assert "--precision" in options("find_drop_point")[0]


def test_a_failing_compile_ends_with_one_line(tiny_net, monkeypatch):
    """A backend that cannot compile (as without a C++ compiler) gives a BridgeError naming the cause."""
    import utils.training as training
    from utils.errors import BridgeError

    def no_compiler(gm, example_inputs):
        raise RuntimeError("no working C++ compiler found")

    real = torch.compile
    monkeypatch.setattr(training.torch, "compile", lambda m, **kw: real(m, backend=no_compiler))
    with pytest.raises(BridgeError, match="--compile failed .*no working C\\+\\+ compiler found.*without --compile"):
        train_one_epoch(tiny_net, _toy_data(32), torch.optim.SGD(tiny_net.parameters(), lr=0.1), "cpu",
                        Precision(compile=True))


_FAULTS_PROBE = r"""
import json, resource, sys
import torch
sys.path.insert(0, sys.argv[1])
import utils.host_memory as host_memory
from utils.training import train_one_epoch

def faults_per_cycle(cycles=6, floats=16 << 20):  # a 64 MiB buffer allocated, touched and freed each cycle
    counts = []
    for _ in range(cycles):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(floats)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts

default = faults_per_cycle()
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))]
train_one_epoch(net, data, torch.optim.SGD(net.parameters(), lr=0.1), "cpu")
print(json.dumps({"default": default, "kept": host_memory._freed_memory_kept, "after": faults_per_cycle()}))
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
@pytest.mark.parametrize("env", ["", "0"])
def test_cpu_training_keeps_freed_blocks_so_buffers_stop_faulting(env):
    """A 64 MiB buffer freed and allocated again costs ~16k page faults every time with glibc's defaults
    (it is unmapped on free); once a CPU training epoch has run, the process keeps the block, so after the
    heap has grown to hold it (the first cycle or two) the faults stop. BRIDGE_KEEP_FREED_MEMORY=0 leaves
    the allocator alone. Fresh interpreters, because the setting is process-wide."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    environ = dict(__import__("os").environ, BRIDGE_KEEP_FREED_MEMORY=env or "1")
    out = subprocess.run([sys.executable, "-c", _FAULTS_PROBE, ROOT], capture_output=True, text=True, env=environ,
                         check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert min(got["default"]) > 8000, got  # 16,384 pages of 4 KiB mapped and touched again each cycle
    if env == "0":
        assert got["kept"] is False and min(got["after"]) > 8000, got
    else:
        assert got["kept"] is True and sum(got["after"][3:]) < 100, got
