"""SSIM feature drift: the published map construction, scikit-image's SSIM, and search-space selection."""
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from utils.masks import add_masks
from utils.pruners import PRUNERS
from utils.ssim import (FeatureMapRecorder, cosine_similarity, layer_feature_maps, layer_ssim, map_similarity,
                            select_search_space, ssim_window)


@pytest.mark.parametrize("size,win", [(32, 7), (16, 7), (8, 7), (6, 5), (4, 3), (3, 3)])
def test_ssim_equals_scikit_image_with_published_window(size, win):
    rng = np.random.default_rng(size)
    a = rng.random((size, size))
    b = np.clip(a + 0.2 * rng.standard_normal((size, size)), 0, 1)
    assert ssim_window(size, size) == win
    assert map_similarity(a, b) == pytest.approx(structural_similarity(a, b, data_range=1.0, win_size=win))
    assert map_similarity(a, a) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [1, 2])
def test_tiny_maps_use_cosine(size):
    a = np.arange(1, size * size + 1, dtype=float).reshape(size, size)
    b = a[::-1].copy()
    expected = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert map_similarity(a, b) == pytest.approx(expected)
    assert cosine_similarity(np.zeros(4), np.ones(4)) == 0.0


def _naive_maps(model, batches, names):
    """The published recipe written out: per sample channel sum, L1 normalise, concatenate, mean, min-max."""
    outs = {n: [] for n in names}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: outs[n].append(o.detach())) for n in names]
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    maps = {}
    for n in names:
        a = torch.cat(outs[n]).sum(1)
        a = a / a.abs().flatten(1).sum(1).clamp_min(1e-12)[:, None, None]
        m = a.mean(0)
        m = (m - m.min()) / (m.max() - m.min() + 1e-8)
        maps[n] = m.numpy()
    return maps


def test_feature_maps_match_naive_recipe_and_hooks_are_removed(tiny_net):
    batches = [torch.randn(5, 3, 8, 8) for _ in range(3)]
    names = ["conv1", "conv2", "conv3", "fc"]
    maps = layer_feature_maps(tiny_net, [(x, None) for x in batches], names, "cpu", num_batches=3)
    naive = _naive_maps(tiny_net, batches, names[:3])
    assert set(maps) == {"conv1", "conv2", "conv3"}  # Linear layers have no map
    for n in naive:
        assert np.allclose(maps[n], naive[n], atol=1e-6)
    assert all(len(m._forward_hooks) == 0 for m in tiny_net.modules())
    with FeatureMapRecorder(tiny_net, names):
        assert len(tiny_net.conv1._forward_hooks) == 1
    assert len(tiny_net.conv1._forward_hooks) == 0


def test_layer_ssim_is_one_for_identical_models_and_drops_with_pruning(tiny_net):
    data = [(torch.randn(8, 3, 8, 8), None) for _ in range(2)]
    sparse = add_masks(type(tiny_net)())
    sparse.load_state_dict(tiny_net.state_dict(), strict=False)
    add_masks(tiny_net)
    sparse.load_state_dict(tiny_net.state_dict())
    same = layer_ssim(tiny_net, sparse, data, "cpu", num_batches=2)
    assert all(v == pytest.approx(1.0) for v in same.values())
    PRUNERS["glob"](sparse, 0.9)
    drift = layer_ssim(tiny_net, sparse, data, "cpu", num_batches=2)
    assert min(drift.values()) < 0.99


def test_search_space_threshold_order_and_fallback():
    names = ["a", "b", "c", "d", "fc"]
    scores = {"a": 0.8, "b": 0.1, "c": 0.3, "d": 0.3}
    chosen, fb = select_search_space(scores, names, 0.3)
    assert chosen == ["b", "c", "d"] and not fb  # <= threshold, ascending SSIM (ties in module order)
    chosen, fb = select_search_space(scores, names, 0.05)
    assert chosen == ["b"] and fb
    chosen, _ = select_search_space(scores, names, 0.2, include_linear=True)
    assert chosen == ["b", "fc"]
