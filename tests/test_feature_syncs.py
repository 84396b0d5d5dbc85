"""SSIM feature hooks accumulate on the model's device and copy to the host once, with the same maps."""
import numpy as np
import torch

from utils.ssim import FeatureMapRecorder, layer_feature_maps


def _per_batch_copy_maps(model, batches, names):
    """The maps as the hooks made them before: each batch's per-layer sum copied to the CPU and added there
    in float64, then averaged and min-max normalised."""
    sums, counts = {}, {}
    modules = dict(model.named_modules())

    def hook(name):
        def record(_m, _i, out):
            if out.dim() != 4:
                return
            a = out.detach().float().sum(1)
            a = a / a.abs().flatten(1).sum(1).clamp_min(1e-12)[:, None, None]
            sums[name] = sums.get(name, 0) + a.sum(0).cpu().double()
            counts[name] = counts.get(name, 0) + a.shape[0]
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    out = {}
    for name, total in sums.items():
        m = total / counts[name]
        lo, hi = m.min(), m.max()
        if hi > lo:
            m = (m - lo) / (hi - lo + 1e-8)
        out[name] = m.numpy()
    return out


def test_maps_bit_identical_to_per_batch_host_accumulation(tiny_net):
    torch.manual_seed(1)
    batches = [torch.randn(6, 3, 8, 8) for _ in range(4)]
    names = ["conv1", "conv2", "conv3", "fc"]
    got = layer_feature_maps(tiny_net, [(x, None) for x in batches], names, "cpu", num_batches=4)
    want = _per_batch_copy_maps(tiny_net, batches, names)
    assert list(got) == list(want) == ["conv1", "conv2", "conv3"]
    for n in want:
        assert got[n].dtype == np.float64 and got[n].shape == want[n].shape
        assert np.array_equal(got[n], want[n]), n


def test_hooks_copy_nothing_to_the_host_and_maps_copy_once(tiny_net, monkeypatch):
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(tuple(self.shape)) or real_cpu(self))
    for name in ("item", "tolist", "numpy"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _r=real, _n=name, **k: copies.append(_n) or _r(self))
    tiny_net.eval()
    with torch.no_grad(), FeatureMapRecorder(tiny_net, ["conv1", "conv2", "conv3"]) as rec:
        for _ in range(3):
            tiny_net(torch.randn(4, 3, 8, 8))
    assert copies == []  # nothing left the device during the forwards
    assert all(t.dtype == torch.float64 for t in rec.sums.values())
    maps = rec.maps()
    total = sum(t.numel() for t in rec.sums.values())
    assert copies[0] == (total,) and "item" not in copies and "tolist" not in copies  # one copy of all layers
    assert [c for c in copies if isinstance(c, tuple)] == [(total,)]
    assert set(maps) == {"conv1", "conv2", "conv3"}
