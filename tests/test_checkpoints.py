"""Checkpoints: weights_only round trips, atomic writes, published formats, clear errors."""
import os

import pytest
import torch

from models import model_loader
from utils.checkpoints import (load_checkpoint, load_state_into, model_from_checkpoint, model_sparsity_of_state,
                               save_checkpoint)
from utils.errors import CheckpointError
from utils.masks import add_masks, model_sparsity
from utils.pretraining import TrainingState
from utils.pruners import PRUNERS


def _sparse_resnet20(amount=0.9):
    torch.manual_seed(0)
    model = add_masks(model_loader("resnet20"))
    PRUNERS["glob"](model, amount)
    return model


def test_round_trip_with_weights_only(tmp_path):
    model = _sparse_resnet20().to(memory_format=torch.channels_last)
    path = tmp_path / "sub" / "resnet20_0.9.pth"
    save_checkpoint(path, model, "resnet20", "CIFAR10", "prune_oneshot", {"lr": 3e-4, "oneshot": [0.9]},
                    {"val_acc": 12.5, "test_acc": 11.0}, pruner="glob")
    raw = torch.load(path, weights_only=True)
    assert raw["model"] == "resnet20" and raw["stage"] == "prune_oneshot" and raw["pruner"] == "glob"
    assert raw["metrics"] == {"val_acc": 12.5, "test_acc": 11.0}
    assert raw["sparsity"] == pytest.approx(model_sparsity(model))
    assert sorted(os.listdir(path.parent)) == ["resnet20_0.9.pth"]  # no temporary file left behind
    loaded, ckpt = model_from_checkpoint(path, "resnet20", expect="sparse")
    assert model_sparsity(loaded) == pytest.approx(raw["sparsity"])
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_published_formats_are_accepted(tmp_path):
    sparse = _sparse_resnet20()
    torch.save(sparse.state_dict(), tmp_path / "raw.pth")  # prune_unstructure.py's raw reparam state_dict
    dense = model_loader("resnet20")
    torch.save({"net": dense.state_dict(), "acc": 91.2, "epoch": 150}, tmp_path / "dense.pth")
    torch.save({"epoch": 3, "reward": 0.01, "accuracy": 90.1, "model_state_dict": sparse.state_dict()},
               tmp_path / "episode.pth")
    m, c = model_from_checkpoint(tmp_path / "raw.pth", "resnet20", expect="sparse")
    assert c["format"] == "published-raw" and model_sparsity(m) == pytest.approx(model_sparsity(sparse))
    m, c = model_from_checkpoint(tmp_path / "dense.pth", "resnet20", expect="dense")
    assert c["format"] == "published-dense" and c["metrics"]["val_acc"] == 91.2
    m, c = model_from_checkpoint(tmp_path / "episode.pth", "resnet20")
    assert c["format"] == "published-episode" and c["metrics"]["test_acc"] == 90.1


def test_pickled_module_needs_trust(tmp_path):
    torch.save(_sparse_resnet20(), tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match="trust_pickle"):
        load_checkpoint(tmp_path / "module.pth")
    ckpt = load_checkpoint(tmp_path / "module.pth", trust_pickle=True)
    assert ckpt["format"] == "pickled-module" and model_sparsity_of_state(ckpt["state_dict"]) > 0.89


def test_corrupt_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "ck.pth"
    save_checkpoint(path, model_loader("resnet20"), "resnet20", "CIFAR10", "pretrain")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")


def test_wrong_model_and_wrong_kind_are_named(tmp_path):
    save_checkpoint(tmp_path / "a.pth", model_loader("resnet20"), "resnet20", "CIFAR10", "pretrain")
    with pytest.raises(CheckpointError, match="made for model 'resnet20'"):
        model_from_checkpoint(tmp_path / "a.pth", "resnet32")
    with pytest.raises(CheckpointError, match="dense checkpoint"):
        model_from_checkpoint(tmp_path / "a.pth", "resnet20", expect="sparse")
    torch.save(model_loader("resnet32").state_dict(), tmp_path / "b.pth")  # no model name recorded
    with pytest.raises(CheckpointError, match="unexpected keys: layer1.3"):
        model_from_checkpoint(tmp_path / "b.pth", "resnet20")
    save_checkpoint(tmp_path / "c.pth", _sparse_resnet20(), "resnet20", "CIFAR10", "prune")
    with pytest.raises(CheckpointError, match="pruned checkpoint"):
        model_from_checkpoint(tmp_path / "c.pth", "resnet20", expect="dense")


def test_load_state_into_adds_masks(tmp_path):
    sparse = _sparse_resnet20()
    fresh = model_loader("resnet20")
    load_state_into(fresh, sparse.state_dict())
    assert model_sparsity(fresh) == pytest.approx(model_sparsity(sparse))


@pytest.mark.parametrize("entry", ["convert_checkpoint", "evaluation_alias"])
def test_convert_published_formats_round_trip(tmp_path, entry):
    """Published raw / dense / pickled-module files -> our format -> identical tensors, weights_only; through
    convert_checkpoint.py and through its alias `test_unstructure_regrowth_model.py --convert`."""
    import convert_checkpoint
    import test_unstructure_regrowth_model as evaluate_script

    def convert(flags):
        if entry == "convert_checkpoint":
            script, flags = convert_checkpoint, [("--out_dir" if f == "--convert" else f) for f in flags]
        else:
            script = evaluate_script
        return script.main(script.get_args_parser().parse_args(flags))

    sparse = _sparse_resnet20()
    src = tmp_path / "published"
    src.mkdir()
    torch.save(sparse.state_dict(), src / "iterate_0.9.pth")
    torch.save({"net": model_loader("resnet20").state_dict(), "acc": 90.0, "epoch": 3}, src / "pretrain_ckpt.pth")
    torch.save(sparse, src / "best_ep1_rwd+0.01.pth")  # a whole pickled module, as one-shot regrowth saved it
    out = tmp_path / "converted"
    written = convert(["--model_path", str(src), "--m_name", "resnet20", "--convert", str(out), "--trust_pickle"])
    assert sorted(os.path.basename(p) for p in written) == ["best_ep1_rwd+0.01.pth", "iterate_0.9.pth",
                                                            "pretrain_ckpt.pth"]
    for name in ("iterate_0.9.pth", "best_ep1_rwd+0.01.pth"):
        ck = torch.load(out / name, weights_only=True)
        assert ck["format"] == "bridge-v1" and ck["model"] == "resnet20"
        assert ck["sparsity"] == pytest.approx(model_sparsity(sparse))
        for k, v in sparse.state_dict().items():
            assert torch.equal(ck["state_dict"][k], v)
    dense = torch.load(out / "pretrain_ckpt.pth", weights_only=True)
    assert dense["metrics"]["val_acc"] == 90.0 and dense["sparsity"] == 0.0
    # without --trust_pickle the pickled module is refused with a clear message
    with pytest.raises(CheckpointError, match="trust_pickle"):
        convert(["--model_path", str(src / "best_ep1_rwd+0.01.pth"), "--m_name", "resnet20", "--convert", str(out)])


def test_pretrain_resume_state_records_and_checks_its_data_set(tmp_path):
    """last.pth names its model and data set; resuming it for another data set is refused (a torchvision model's
    head is sized by the data set, and a silent resume would train on the wrong classes)."""
    def fresh():
        model = model_loader("resnet20")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1)

    path = str(tmp_path / "last.pth")
    TrainingState(epoch=3, history=[]).save(path, "resnet20", "digits", *fresh(), finished=False)
    assert torch.load(path, weights_only=True)["dataset"] == "digits"
    assert TrainingState.restore(path, "resnet20", "digits", *fresh()).epoch == 3
    with pytest.raises(CheckpointError, match="was trained on 'digits', not 'CIFAR10'"):
        TrainingState.restore(path, "resnet20", "CIFAR10", *fresh())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_umask_permissions(tmp_path, umask):
    """Checkpoints and sparse files are written through a temporary file (0600 as created); the finished file
    has what a plain open() gives under the umask, so a collaborator can read it where the umask allows."""
    from utils.granularity import WEIGHTS
    from utils.sparse_file import write_sparse

    old = os.umask(umask)
    try:
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
        ckpt = save_checkpoint(tmp_path / "c.pth", _sparse_resnet20(), "resnet20", "CIFAR10", "prune")
        write_sparse(str(tmp_path / "s.safetensors"), _sparse_resnet20(), "resnet20", WEIGHTS.name)
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert os.stat(plain).st_mode & 0o777 == want
    assert os.stat(ckpt).st_mode & 0o777 == want
    assert os.stat(tmp_path / "s.safetensors").st_mode & 0o777 == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth", "plain", "s.safetensors"]  # no temporary left
