"""Saliency against a naive per-batch autograd computation."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.saliency import filter_saliency, weight_saliency


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(n)]


def test_weight_saliency_equals_naive(tiny_net):
    data = _batches()
    names = ["conv1", "conv2", "fc"]
    sal, taylor = weight_saliency(tiny_net, data, names, "cpu", with_taylor=True)
    modules = dict(tiny_net.named_modules())
    naive = {n: torch.zeros_like(modules[n].weight) for n in names}
    naive_t = {n: torch.zeros_like(modules[n].weight) for n in names}
    tiny_net.eval()
    for x, y in data:
        tiny_net.zero_grad()
        F.cross_entropy(tiny_net(x), y).backward()
        for n in names:
            w, g = modules[n].weight.detach(), modules[n].weight.grad
            naive[n] += g**2 * w**2
            naive_t[n] += (g * w).abs()
    for n in names:
        assert torch.allclose(sal[n], naive[n] / len(data), rtol=1e-5, atol=1e-12)
        assert torch.allclose(taylor[n], naive_t[n] / len(data), rtol=1e-5, atol=1e-12)
    per_filter = filter_saliency(sal)
    assert torch.allclose(per_filter["conv2"], sal["conv2"].sum((1, 2, 3)))


class WithUnusedLayer(nn.Module):
    """Like the published EfficientNet's first block: a conv that forward never uses."""

    def __init__(self):
        super().__init__()
        self.used = nn.Conv2d(3, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.used(x).mean((2, 3)))


def test_unused_parameters_do_not_crash():
    torch.manual_seed(0)
    model = WithUnusedLayer()
    sal = weight_saliency(model, _batches(2), ["used", "unused", "fc"], "cpu")
    assert torch.all(sal["unused"] == 0) and sal["used"].sum() > 0
    assert model.training  # the train/eval mode is restored


def test_max_batches_limits_the_pass(tiny_net):
    data = _batches(4)
    one = weight_saliency(tiny_net, data[:1], ["conv1"], "cpu")
    limited = weight_saliency(tiny_net, data, ["conv1"], "cpu", max_batches=1)
    assert torch.allclose(one["conv1"], limited["conv1"])
