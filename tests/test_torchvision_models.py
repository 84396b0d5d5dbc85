"""Models users bring: torchvision CNNs through pretrain -> prune -> regrow -> evaluate -> export on digits, their
module names kept; pretrained weights from the hub cache; clear errors for names, inputs and missing weights."""
import os

import pytest
import torch
import torchvision

import export
import pretrain
import prune_structure
import prune_unstructure
import regrowth_oneshot
import regrowth_structure_oneshot
import test_unstructure_regrowth_model as evaluation
from models import UnknownModelError, canonical_model_name, model_loader, model_spec
from utils.checkpoints import model_from_checkpoint
from utils.errors import BridgeError
from utils.granularity import FILTERS, WEIGHTS
from utils.masks import export_plain_model

TORCHVISION_CNNS = ["torchvision.resnet18", "torchvision.mobilenet_v3_small"]


def _run(module, argv):
    return module.main(module.get_args_parser().parse_args([str(a) for a in argv]))


def _masks(path):
    return {k: v for k, v in torch.load(path, weights_only=True)["state_dict"].items() if k.endswith("weight_mask")}


def _only_turned_on(start, final):
    """Regrowth turns masks on and never off; returns how many it turned on."""
    assert set(start) == set(final)
    for k in start:
        assert torch.all(final[k] >= start[k]), k
    return sum(int((final[k] - start[k]).sum()) for k in start)


@pytest.mark.slow
@pytest.mark.parametrize("m_name", TORCHVISION_CNNS)
def test_torchvision_model_through_every_stage(tmp_path, m_name):
    wd = tmp_path / "wd"
    data = ["--dataset", "digits", "--m_name", m_name, "--train_limit", "128", "--batch_size", "64", "--work_dir", wd,
            "--precision", "fp32"]
    _run(pretrain, data + ["--epochs", "1"])
    dense = wd / m_name / "checkpoint" / "ckpt.pth"
    ckpt = torch.load(dense, weights_only=True)
    assert ckpt["model"] == m_name and ckpt["dataset"] == "digits"
    reference = torchvision.models.get_model(m_name.removeprefix("torchvision."), num_classes=10).state_dict()
    assert set(ckpt["state_dict"]) == set(reference)  # torchvision's module names, its 10-class head
    assert all(ckpt["state_dict"][k].shape == v.shape for k, v in reference.items())

    # weights: one-shot 0.9, then regrow 1% of the prunable weights
    _run(prune_unstructure, data + ["--m_prune", "oneshot", "--oneshot", "0.9", "--finetune_steps", "1"])
    start = wd / m_name / "oneshot" / f"{m_name}_0.9.pth"
    save = tmp_path / "rg"
    _run(regrowth_oneshot, data + ["--model_sparsity", "0.9", "--save_dir", save, "--num_epochs", "2",
                                   "--mini_finetune_steps", "1", "--saliency_batches", "1", "--ssim_num_batches", "1",
                                   "--ssim_threshold", "0.9", "--finetune_steps", "1"])
    final = save / m_name / "oneshot" / "0.9" / "final_finetuned.pth"
    regrown = _only_turned_on(_masks(start), _masks(final))
    prunable = torch.load(start, weights_only=True)["prunable_params"]
    assert 0 < regrown <= int(prunable * 0.01)

    # filters: one level of L1 channel pruning (Torch-Pruning's coupling), then regrow 5% of the filters
    _run(prune_structure, data + ["--m_prune", "iterative", "--iter_end", "1", "--finetune_steps", "1",
                                  "--pruner", "l1"])
    folder = wd / m_name / "structured_iterative"
    level = next(p for p in sorted(folder.glob("*.pth")) if "_0." in p.name)
    structured = tmp_path / "srg"
    _run(regrowth_structure_oneshot, data + ["--initial_ckpt", level, "--save_dir", structured, "--sparsity_delta",
                                             "0.05", "--num_epochs", "2", "--mini_finetune_steps", "1",
                                             "--saliency_batches", "1", "--ssim_num_batches", "1",
                                             "--ssim_threshold", "0.9", "--finetune_steps", "1"])
    s_final = next(structured.rglob("final_finetuned.pth"))
    assert _only_turned_on(_masks(level), _masks(s_final)) > 0
    s_ckpt = torch.load(s_final, weights_only=True)
    assert s_ckpt["sparsity"] < torch.load(level, weights_only=True)["sparsity"]

    # a pruned checkpoint, masks baked in, is torchvision's own model
    plain = export_plain_model(model_from_checkpoint(final, m_name)[0]).state_dict()
    torchvision.models.get_model(m_name.removeprefix("torchvision."), num_classes=10).load_state_dict(plain)

    # evaluation of both kinds, then export of both
    rows = [_run(evaluation, ["--dataset", "digits", "--model_path", path, "--train_limit", "128"])[0]
            for path in (final, s_final)]
    assert [r["structured"] for r in rows] == [False, True] and all(0 <= r["test_acc"] <= 100 for r in rows)
    assert rows[0]["nonzero_params"] < rows[1]["nonzero_params"]  # 90% of weights pruned vs ~25% of channels
    for path in (final, s_final):
        onnx = _run(export, ["--model_path", path, "--out", tmp_path / "export"])
        assert onnx["max_abs_diff"] < 1e-4
        sparse = _run(export, ["--model_path", path, "--format", "sparse", "--out", tmp_path / "export"])
        assert sparse["read_back_equal"] and sparse["bytes"] == sparse["boundary_bytes"] + sparse["header_bytes"]


def test_torchvision_names_and_specs():
    assert canonical_model_name("torchvision.resnet18") == "torchvision.resnet18"
    spec = model_spec("torchvision.resnet18", "tiny_imagenet")
    assert (spec.num_classes, spec.input_size, spec.dataset_family) == (200, 64, None)
    model = model_loader("torchvision.mobilenet_v3_small", dataset="digits")
    assert type(model) is torchvision.models.MobileNetV3 and model.classifier[-1].out_features == 10
    assert WEIGHTS.total(model) > 0 and FILTERS.total(model) > 0
    with pytest.raises(UnknownModelError, match=r"close matches: torchvision.resnet18"):
        canonical_model_name("torchvision.resnet19")
    with pytest.raises(UnknownModelError, match=r"close matches: torchvision.mobilenet_v3_small"):
        canonical_model_name("mobilenet_v3_small")  # the prefix forgotten
    with pytest.raises(UnknownModelError, match="vision transformer"):
        canonical_model_name("torchvision.vit_b_16")
    with pytest.raises(BridgeError, match="takes its classes and input size from the data set"):
        model_spec("torchvision.resnet18")
    with pytest.raises(BridgeError, match=r"cannot take 32x32 images"):
        model_loader("torchvision.alexnet", dataset="digits")  # its pooling needs 63 pixels or more


def test_pretrained_weights_from_the_hub_cache(tmp_path, monkeypatch):
    """--tv_weights copies every tensor whose name and shape match from the cached file; the 10-class head stays
    fresh. Without the file and without downloads: one clear line."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    with pytest.raises(BridgeError, match=r"are not in .*hub/checkpoints: download https://"):
        model_loader("torchvision.resnet18", dataset="digits", tv_weights="DEFAULT", download=False)
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18().state_dict()  # a stand-in for the published file, 1000 classes
    os.makedirs(tmp_path / "hub" / "hub" / "checkpoints")
    torch.save(imagenet, tmp_path / "hub" / "hub" / "checkpoints" / os.path.basename(weights.url))
    torch.manual_seed(1)
    model = model_loader("torchvision.resnet18", dataset="digits", tv_weights="DEFAULT", download=False)
    own = model.state_dict()
    for k, v in imagenet.items():
        if k.startswith("fc."):
            assert own[k].shape[0] == 10  # the head: this data set's classes, freshly initialised
        else:
            assert torch.equal(own[k], v), k
    with pytest.raises(BridgeError, match=r"unknown --tv_weights for torchvision.resnet18 'IMAGENET22K'; valid: DEFAULT"):
        model_loader("torchvision.resnet18", dataset="digits", tv_weights="IMAGENET22K")
    with pytest.raises(BridgeError, match=r"--tv_weights is for torchvision.<name> models, not resnet20"):
        model_loader("resnet20", tv_weights="DEFAULT")
