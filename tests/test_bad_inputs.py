"""Bad input anywhere gives one clear line on stderr and exit status 2, never a traceback."""
import os

import pytest
import torch

import pretrain
import prune_structure
import prune_unstructure
import regrowth_iterative
import regrowth_oneshot
import regrowth_structure_oneshot
import find_drop_point
import regrowth_structure_iterative
import convert_checkpoint
import export
import report
import saliency_analysis
import single_layer_regrowth_analysis
import test_unstructure_regrowth_model as evaluate_script
from tests.conftest import prepare_work_dir
from utils import cli

DIGITS = ["--dataset", "digits", "--train_limit", "128", "--batch_size", "64"]
# a path below a regular file cannot be created, even by root (a read-only folder would not stop root)
UNWRITABLE = ("not_a_checkpoint.pth", "out")
SCRIPTS = {"pretrain": pretrain, "prune_u": prune_unstructure, "prune_s": prune_structure,
           "oneshot": regrowth_oneshot, "iterative": regrowth_iterative, "s_oneshot": regrowth_structure_oneshot,
           "eval": evaluate_script, "single": single_layer_regrowth_analysis, "report": report,
           "saliency": saliency_analysis, "boundary": find_drop_point, "s_iterative": regrowth_structure_iterative,
           "convert": convert_checkpoint, "export": export}


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    """A digits work dir with a dense model, a one-shot 0.9 and an iterative 0.3 checkpoint, plus bad files."""
    root = tmp_path_factory.mktemp("bad")
    w = str(root)
    prepare_work_dir(w, DIGITS + ["--m_name", "resnet20"], 1,
                     ["--m_prune", "oneshot", "--oneshot", "0.9", "--finetune_steps", "1"],
                     ["--iter_end", "1", "--finetune_steps", "1"])
    good = os.path.join(w, "resnet20", "oneshot", "resnet20_0.9.pth")
    data = open(good, "rb").read()
    open(os.path.join(w, "truncated.pth"), "wb").write(data[: len(data) // 3])
    open(os.path.join(w, "not_a_checkpoint.pth"), "w").write("hello")
    torch.save({"something": 1}, os.path.join(w, "foreign.pth"))
    os.makedirs(os.path.join(w, "empty_dir"))
    return w


def P(w, *parts):
    return os.path.join(w, *parts)


# (script, argv builder, expected text in the error line)
CASES = [
    ("pretrain", lambda w: ["--m_name", "resnet99"] + DIGITS, "unknown model 'resnet99'; valid: vgg16, resnet20"),
    ("pretrain", lambda w: ["--m_name", "resnet20", "--dataset", "mnist"], "unknown dataset 'mnist'; valid: CIFAR10"),
    ("pretrain", lambda w: ["--m_name", "resnet20", "--epochs", "0"] + DIGITS, "--epochs must be at least 1"),
    ("pretrain", lambda w: ["--m_name", "resnet20", "--val_split", "1.5"] + DIGITS, "--val_split must be in [0, 1)"),
    ("pretrain", lambda w: ["--m_name", "resnet20", "--dataset", "CIFAR10", "--data_dir", P(w, "nodata"),
                            "--no_download"], "CIFAR-10 not found under"),
    ("pretrain", lambda w: ["--m_name", "resnet20", "--resume", "--work_dir", P(w, "fresh")] + DIGITS,
     "nothing to resume"),
    ("pretrain", lambda w: ["--m_name", "resnet20", "--epochs", "1", "--work_dir", P(w, *UNWRITABLE)] + DIGITS,
     "cannot write to"),
    ("pretrain", lambda w: ["--m_name", "vgg16TinyImageNet"] + DIGITS, "is built for tiny_imagenet data"),
    ("pretrain", lambda w: ["--m_name", "resnet20", "--device", "tpu"] + DIGITS, "unknown device 'tpu'"),
    ("pretrain", lambda w: ["--m_name", "torchvision.resnet19"] + DIGITS,
     "unknown torchvision model 'torchvision.resnet19'; close matches: torchvision.resnet18"),
    ("pretrain", lambda w: ["--m_name", "torchvision.vit_b_16"] + DIGITS, "vision transformer"),
    ("pretrain", lambda w: ["--m_name", "torchvision.alexnet"] + DIGITS, "cannot take 32x32 images"),
    ("pretrain", lambda w: ["--m_name", "resnet20", "--tv_weights", "DEFAULT"] + DIGITS,
     "--tv_weights is for torchvision.<name> models, not resnet20"),
    ("pretrain", lambda w: ["--m_name", "torchvision.resnet18", "--tv_weights", "IMAGENET22K"] + DIGITS,
     "unknown --tv_weights for torchvision.resnet18 'IMAGENET22K'"),
    ("prune_u", lambda w: ["--pruner", "magic", "--work_dir", w] + DIGITS, "unknown pruner 'magic'; valid: lamp"),
    ("prune_u", lambda w: ["--sparsity", "1.0", "--work_dir", w] + DIGITS, "--sparsity must be in [0, 1)"),
    ("prune_u", lambda w: ["--m_prune", "oneshot", "--oneshot", "1.2", "--work_dir", w] + DIGITS,
     "--oneshot target must be in [0, 1)"),
    ("prune_u", lambda w: ["--m_prune", "oneshot", "--oneshot", "-0.1", "--work_dir", w] + DIGITS,
     "--oneshot target must be in [0, 1)"),
    ("prune_u", lambda w: ["--iter_start", "5", "--iter_end", "2", "--work_dir", w] + DIGITS,
     "need 1 <= --iter_start <= --iter_end"),
    ("prune_u", lambda w: ["--work_dir", P(w, "nowhere")] + DIGITS, "checkpoint not found"),
    ("prune_u", lambda w: ["--dense_ckpt", P(w, "truncated.pth"), "--work_dir", w] + DIGITS,
     "truncated or not a torch checkpoint"),
    ("prune_u", lambda w: ["--dense_ckpt", P(w, "not_a_checkpoint.pth"), "--work_dir", w] + DIGITS,
     "truncated or not a torch checkpoint"),
    ("prune_u", lambda w: ["--dense_ckpt", P(w, "resnet20", "oneshot", "resnet20_0.9.pth"), "--work_dir", w] + DIGITS,
     "is a pruned checkpoint"),
    ("prune_u", lambda w: ["--m_name", "resnet32", "--dense_ckpt", P(w, "resnet20", "checkpoint", "ckpt.pth"),
                           "--work_dir", w] + DIGITS, "was made for model 'resnet20', not 'resnet32'"),
    ("prune_u", lambda w: ["--dense_ckpt", P(w, "foreign.pth"), "--work_dir", w] + DIGITS,
     "is not a checkpoint this project understands"),
    ("prune_u", lambda w: ["--finetune_steps", "3", "--finetune_epochs", "1", "--work_dir", w] + DIGITS,
     "not both"),
    ("prune_u", lambda w: ["--iter_start", "3", "--iter_end", "3", "--work_dir", w] + DIGITS,
     "level 2 is needed to start at level 3"),
    ("prune_s", lambda w: ["--m_name", "resnet20", "--pruner", "random", "--work_dir", w] + DIGITS,
     "unknown importance 'random'; valid: l1, l2, lamp, taylor, hessian"),
    ("prune_s", lambda w: ["--m_name", "resnet20", "--ratio_per_step", "1.0", "--work_dir", w] + DIGITS,
     "--ratio_per_step must be in [0, 1)"),
    ("oneshot", lambda w: ["--m_name", "resnet20", "--regrow_step", "1.5", "--work_dir", w] + DIGITS,
     "--regrow_step must be in (0, 1)"),
    ("oneshot", lambda w: ["--m_name", "resnet20", "--regrow_step", "0", "--work_dir", w] + DIGITS,
     "--regrow_step must be in (0, 1)"),
    ("oneshot", lambda w: ["--m_name", "resnet20", "--initial_ckpt", P(w, "resnet20", "checkpoint", "ckpt.pth"),
                           "--work_dir", w] + DIGITS, "is a dense checkpoint (no weight masks)"),
    ("oneshot", lambda w: ["--m_name", "resnet20", "--model_sparsity", "0.97", "--work_dir", w] + DIGITS,
     "checkpoint not found"),
    ("oneshot", lambda w: ["--m_name", "resnet20", "--model_sparsity", "0.9", "--acc_baseline", "91",
                           "--work_dir", w] + DIGITS, "--acc_baseline is a fraction"),
    ("oneshot", lambda w: ["--m_name", "resnet20", "--model_sparsity", "0.9", "--num_epochs", "0",
                           "--work_dir", w] + DIGITS, "--num_epochs must be at least 1"),
    ("oneshot", lambda w: ["--m_name", "resnet20", "--model_sparsity", "0.9", "--resume", "--save_dir",
                           P(w, "rg_none"), "--work_dir", w, "--ssim_num_batches", "1", "--saliency_batches", "1"]
     + DIGITS, "nothing to resume"),
    ("oneshot", lambda w: ["--m_name", "resnet20", "--model_sparsity", "0.9", "--save_dir", P(w, *UNWRITABLE),
                           "--work_dir", w] + DIGITS, "cannot write to"),
    ("iterative", lambda w: ["--m_name", "resnet20", "--target_sparsity", "1.0", "--work_dir", w] + DIGITS,
     "--target_sparsity must be in [0, 1)"),
    ("iterative", lambda w: ["--m_name", "resnet20", "--min_budget_frac", "0.01", "--max_budget_frac", "0.001",
                             "--work_dir", w] + DIGITS, "need --min_budget_frac <= --max_budget_frac"),
    ("iterative", lambda w: ["--m_name", "resnet20", "--baseline_dir", P(w, "missing")] + DIGITS,
     "baseline folder not found"),
    ("iterative", lambda w: ["--m_name", "resnet20", "--baseline_dir", P(w, "empty_dir")] + DIGITS,
     "no pruned checkpoint with a recorded val_acc"),
    ("iterative", lambda w: ["--m_name", "resnet20", "--work_dir", w, "--resume_iter", "3", "--save_dir",
                             P(w, "rg_it"), "--saliency_batches", "1", "--ssim_num_batches", "1"] + DIGITS,
     "cannot start at iteration 3"),
    ("s_oneshot", lambda w: ["--m_name", "resnet20", "--initial_ckpt", P(w, "resnet20", "oneshot", "resnet20_0.9.pth"),
                             "--sparsity_delta", "0", "--work_dir", w] + DIGITS, "--sparsity_delta must be in (0, 1)"),
    ("s_oneshot", lambda w: ["--m_name", "resnet20", "--initial_ckpt", P(w, "resnet20", "oneshot", "resnet20_0.9.pth"),
                             "--init_strategy", "ones", "--work_dir", w] + DIGITS, "invalid choice: 'ones'"),
    ("convert", lambda w: ["--model_path", P(w, "nope.pth"), "--out_dir", P(w, "conv")], "--model_path not found"),
    ("convert", lambda w: ["--model_path", P(w, "truncated.pth"), "--out_dir", P(w, "conv")],
     "truncated or not a torch checkpoint"),
    ("convert", lambda w: ["--model_path", P(w, "foreign.pth"), "--out_dir", P(w, "conv")],
     "is not a checkpoint this project understands"),
    ("convert", lambda w: ["--model_path", P(w, "resnet20", "oneshot", "resnet20_0.9.pth"), "--out_dir",
                           P(w, *UNWRITABLE)], "cannot write to"),
    ("export", lambda w: ["--model_path", P(w, "nope.pth")], "not found"),
    ("export", lambda w: ["--model_path", P(w, "truncated.pth")], "truncated or not a torch checkpoint"),
    ("export", lambda w: ["--model_path", P(w, "foreign.pth")], "is not a checkpoint this project understands"),
    ("export", lambda w: ["--model_path", P(w, "resnet20", "oneshot", "resnet20_0.9.pth"), "--format", "tflite"],
     "unknown export format 'tflite'"),
    ("export", lambda w: ["--model_path", P(w, "resnet20", "oneshot", "resnet20_0.9.pth"), "--format", "sparse",
                          "--storage", "coo"], "unknown storage 'coo'"),
    ("export", lambda w: ["--model_path", P(w, "resnet20", "oneshot", "resnet20_0.9.pth"), "--out",
                          P(w, *UNWRITABLE)], "cannot write to"),
    ("eval", lambda w: ["--model_path", P(w, "nope.pth")] + DIGITS, "--model_path not found"),
    ("eval", lambda w: ["--model_path", P(w, "empty_dir")] + DIGITS, "no .pth checkpoint under"),
    ("eval", lambda w: ["--model_path", P(w, "truncated.pth")] + DIGITS, "truncated or not a torch checkpoint"),
    ("eval", lambda w: ["--model_path", P(w, "resnet20", "oneshot", "resnet20_0.9.pth"), "--m_name", "vgg16"]
     + DIGITS, "was made for model 'resnet20', not 'vgg16'"),
    ("single", lambda w: ["--work_dir", w, "--model_sparsity", "0.9", "--regrow_frac", "0"] + DIGITS,
     "--regrow_frac must be in (0, 1)"),
    ("single", lambda w: ["--work_dir", w, "--model_sparsity", "0.9", "--regrow_frac", "0.1", "--regrow_count", "5"]
     + DIGITS, "give --regrow_count or --regrow_frac, not both"),
    ("single", lambda w: ["--work_dir", w, "--model_sparsity", "0.9", "--layers", "layer9.conv",
                          "--ssim_num_batches", "1", "--saliency_batches", "1"] + DIGITS,
     "not masked layers of resnet20: layer9.conv"),
    ("report", lambda w: ["--m_name", "resnet56", "--work_dir", w], "no runs for resnet56"),
    ("saliency", lambda w: ["--work_dir", w, "--layers", "nolayer"] + DIGITS, "no weight layer named nolayer"),
    ("boundary", lambda w: ["--model_path", P(w, "no_such_folder")] + DIGITS, "--model_path folder not found"),
    ("boundary", lambda w: ["--model_path", P(w, "empty_dir")] + DIGITS, "no pruned checkpoint in"),
    ("s_iterative", lambda w: ["--m_name", "resnet20", "--regrowth_score", "luck", "--work_dir", w] + DIGITS,
     "invalid choice: 'luck'"),
]


@pytest.mark.parametrize("script,argv,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_clear_line(wd, capsys, monkeypatch, script, argv, expected):
    module = SCRIPTS[script]
    monkeypatch.chdir(wd)  # cases without --work_dir write under ./<m_name>/: never into the repository
    with pytest.raises(SystemExit) as exc:
        cli.run(module.main, module.get_args_parser(), argv(wd))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert expected in err, err
    assert "Traceback" not in err
    last = [line for line in err.strip().splitlines() if line.strip()]
    assert last and last[-1].startswith(("error:", "usage:")) or "error:" in last[-1]


def test_every_stage_script_has_bad_input_cases():
    """A stage script added without bad-input cases fails here: every script in the project root with a CLI."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with_cli = {f[:-3] for f in os.listdir(root)
                if f.endswith(".py") and "def get_args_parser" in open(os.path.join(root, f)).read()}
    covered = {SCRIPTS[c[0]].__name__ for c in CASES}
    assert with_cli - covered == set()
