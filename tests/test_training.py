"""Training loop: step budgets, best-validation selection, NaN detection."""
import pytest
import torch

from utils.errors import NonFiniteLossError
from utils.training import adamw_finetune_optimizer, evaluate, finetune, train_one_epoch


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
