"""The on-disk cache: keys follow content, values round-trip, damaged files are recomputed."""
import torch

from models import model_loader
from utils.cache import DiskCache, cache_key, state_digest


def test_state_digest_follows_content_not_layout():
    torch.manual_seed(0)
    a = model_loader("resnet20")
    b = model_loader("resnet20")
    b.load_state_dict(a.state_dict())
    assert state_digest(a.state_dict()) == state_digest(b.to(memory_format=torch.channels_last).state_dict())
    with torch.no_grad():
        b.conv1.weight[0, 0, 0, 0] += 1e-3
    assert state_digest(a.state_dict()) != state_digest(b.state_dict())


def test_disk_cache_reuses_and_recomputes(tmp_path):
    cache = DiskCache(str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"layer": torch.arange(5.0)}

    key = cache_key("saliency", dense="abc", layers=["x"], batches=3)
    assert cache_key("saliency", dense="abc", layers=["x"], batches=4) != key
    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    assert len(calls) == 1 and torch.equal(first["layer"], second["layer"])
    open(cache.path(key), "wb").write(b"broken")
    cache.get_or_compute(key, compute)
    assert len(calls) == 2
    assert DiskCache(None).get_or_compute(key, compute) and len(calls) == 3  # disabled: always computes


def test_decoded_image_cache_matches_decoding_and_follows_file_changes(tmp_path, monkeypatch):
    import os

    from torchvision.io import encode_jpeg

    from data import readers as data_loader

    monkeypatch.setenv("BRIDGE_CACHE_DIR", str(tmp_path / "cache"))
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.jpg"
        p.write_bytes(encode_jpeg(torch.full((3, 8, 8), 40 * i, dtype=torch.uint8)).numpy().tobytes())
        paths.append(str(p))
    first = data_loader.decoded_images(paths)
    assert torch.equal(first, data_loader._decode_images(paths))
    assert len(os.listdir(tmp_path / "cache")) == 1
    assert torch.equal(data_loader.decoded_images(paths), first)  # reused, same bytes
    # a changed file changes the key: the new content is decoded, not the stale cache
    (tmp_path / "img1.jpg").write_bytes(encode_jpeg(torch.full((3, 8, 8), 250, dtype=torch.uint8)).numpy().tobytes())
    os.utime(tmp_path / "img1.jpg", ns=(1, 1))
    changed = data_loader.decoded_images(paths)
    assert changed[1].float().mean() > 200 and len(os.listdir(tmp_path / "cache")) == 2
