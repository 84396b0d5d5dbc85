"""Typed hyper-parameters: the dataclasses declare the scripts' flags, build from parsed args with the
per-script defaults, and are what the library reads (no utils module reads an argparse Namespace)."""
import argparse
import ast
import dataclasses
import glob
import os

import pytest

import prune_structure
import prune_unstructure
import regrowth_iterative
import regrowth_oneshot
import regrowth_structure_iterative
import regrowth_structure_oneshot
from tests.conftest import ROOT
from utils.hparams import DataHparams, Hparams, ModelSource, RuntimeHparams, flag, record
from utils.pruning_run import PruningHparams
from utils.regrowth.hparams import IterativeHparams, RegrowthHparams

REGROWTH = {regrowth_oneshot: [], regrowth_iterative: [], regrowth_structure_iterative: [],
            regrowth_structure_oneshot: ["--initial_ckpt", "x.pth"]}


@pytest.mark.parametrize("module", list(REGROWTH), ids=lambda m: m.__name__)
def test_every_field_of_a_regrowth_script_is_its_flag_with_the_parsed_value(module):
    args = module.get_args_parser().parse_args(REGROWTH[module])
    hp = RegrowthHparams.from_args(args, structured="structure" in module.__name__)
    parsed = vars(args)
    for group in RegrowthHparams.GROUPS:
        values = getattr(hp, group)
        for f in dataclasses.fields(values):
            if f.name in ("regrowth_score",) and "structure" not in module.__name__:
                assert f.name not in parsed  # weight regrowth has no such flag
                continue
            assert f.name in parsed, f"{module.__name__}: no flag --{f.name}"
            if f.name not in ("mini_finetune_schedule", "reward_repeats", "init_strategy"):  # resolved below
                assert getattr(values, f.name) == parsed[f.name], f.name


def test_published_defaults_per_script():
    """The same dataclass, each script's published defaults (upstream README / reference notes)."""
    def hp(module):
        return RegrowthHparams.from_args(module.get_args_parser().parse_args(REGROWTH[module]),
                                         structured="structure" in module.__name__)

    one, it = hp(regrowth_oneshot), hp(regrowth_iterative)
    s_one, s_it = hp(regrowth_structure_oneshot), hp(regrowth_structure_iterative)
    assert (one.search.num_epochs, it.search.num_epochs, s_one.search.num_epochs) == (400, 300, 300)
    assert (one.controller.early_stop_patience, it.controller.early_stop_patience) == (50, 40)
    assert (one.search.ssim_num_batches, it.search.ssim_num_batches) == (64, 128)
    assert (one.reward.mini_finetune_epochs, it.reward.mini_finetune_epochs, s_it.reward.mini_finetune_epochs) == (
        50, 40, 40)
    assert (one.search.budget_bonus, s_one.search.budget_bonus, s_it.search.budget_bonus) == (0.005, 0.0, 0.0)
    assert (one.search.init_strategy, s_one.search.init_strategy) == ("zero", "reference")
    assert (one.source.m_name, s_it.source.m_name) == ("effnet", "resnet20")
    loop = IterativeHparams.from_args(regrowth_structure_iterative.get_args_parser().parse_args([]))
    assert (loop.budget_space_size, loop.min_budget_frac, loop.max_budget_frac, loop.num_iters) == (6, 0.005, 0.01, 5)
    assert loop.method == "structured_iterative" and loop.target_sparsity == 0.0
    assert IterativeHparams.from_args(regrowth_iterative.get_args_parser().parse_args([])).num_iters == 2


def test_hparams_are_frozen_and_resolution_returns_new_objects():
    args = regrowth_oneshot.get_args_parser().parse_args(["--fast", "--m_name", "VGGTinyImageNet"])
    hp = RegrowthHparams.from_args(args)
    assert hp.source.m_name == "vgg16TinyImageNet" and args.m_name == "VGGTinyImageNet"  # the Namespace stays
    assert hp.reward.mini_finetune_steps == 150 and args.mini_finetune_steps is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.search.num_epochs = 3
    rec = hp.record(args)
    assert rec["mini_finetune_steps"] == 150 and rec["m_name"] == "vgg16TinyImageNet"
    assert "regrowth_score" not in rec  # a field this script has no flag for is not among its arguments


def test_pruning_hparams_read_the_shared_groups():
    args = prune_structure.get_args_parser().parse_args(["--save_at", "10", "20", "--eval_every", "10",
                                                         "--dense_ckpt", "d.pth", "--batch_size", "7"])
    hp = PruningHparams.from_args(args)
    assert hp.source.m_name == "vgg16" and hp.source.dense_path() == "d.pth"
    assert hp.finetune.save_at == (10, 20) and hp.data.batch_size == 7
    assert hp.finetune.steps("iterative", 100) == 40 * 313  # the published budget without a length
    assert PruningHparams.from_args(prune_unstructure.get_args_parser().parse_args(
        ["--finetune_epochs", "1.5"])).finetune.steps("oneshot", 10) == 15
    assert hp.record(args)["save_at"] == [10, 20]
    default = PruningHparams.from_args(prune_unstructure.get_args_parser().parse_args([]))
    assert default.source.m_name == "resnet20"
    assert default.source.dense_path() == os.path.join(".", "resnet20", "checkpoint", "ckpt.pth")


def test_flag_declaration_options():
    @dataclasses.dataclass(frozen=True)
    class Example(Hparams):
        group = "example"
        steps: int = flag(100, "steps (default {default})", type=int)
        levels: tuple = flag([1, 2], "", type=int, nargs="+")
        cheap: bool = flag(False, "", action="store_true", aliases=("-c",))

    p = argparse.ArgumentParser()
    Example.add_args(p, defaults={"steps": 5})
    assert "steps (default 5)" in p.format_help()
    ex = Example.from_args(p.parse_args(["-c"]))
    assert ex == Example(steps=5, levels=(1, 2), cheap=True)
    assert Example.from_args(p.parse_args(["--levels", "3"])).levels == (3,)
    fixed = argparse.ArgumentParser()
    Example.add_args(fixed, fixed={"steps": 9}, omit=("cheap",))
    args = fixed.parse_args([])
    assert args.steps == 9 and not hasattr(args, "cheap") and Example.from_args(args).cheap is False
    with pytest.raises(SystemExit):
        fixed.parse_args(["--steps", "3"])  # a fixed field has no flag
    with pytest.raises(TypeError, match="no field"):
        Example.add_args(argparse.ArgumentParser(), defaults={"stepz": 1})
    assert record(argparse.Namespace(steps=1, other="x"), Example(steps=2)) == {"steps": 2, "other": "x"}


def test_shared_groups_cover_their_flags():
    p = argparse.ArgumentParser()
    for group in (ModelSource, DataHparams, RuntimeHparams):
        group.add_args(p)
    args = p.parse_args(["--dataset", "digits", "--seed", "3", "--work_dir", "w"])
    assert DataHparams.from_args(args).dataset == "digits" and RuntimeHparams.from_args(args).seed == 3
    assert ModelSource.from_args(args).dense_path() == os.path.join("w", "resnet20", "checkpoint", "ckpt.pth")


def _functions_reading_a_namespace(path):
    """Functions of `path` that take an `args` parameter or read `setup.args`, other than the builders."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [a.arg for a in node.args.args + node.args.kwonlyargs]
            if "args" in names and node.name not in ("from_args", "record", "print_args"):
                found.append(f"{path}:{node.name}")
        if isinstance(node, ast.Attribute) and node.attr == "args" and isinstance(node.value, ast.Name) \
                and node.value.id in ("setup", "self"):
            found.append(f"{path}:{node.lineno} {node.value.id}.args")
    return found


def test_no_utils_module_reads_an_argparse_namespace():
    files = glob.glob("utils/**/*.py", root_dir=ROOT, recursive=True) + glob.glob("data/*.py", root_dir=ROOT)
    offenders = [hit for f in sorted(files) for hit in _functions_reading_a_namespace(f)]
    assert not offenders, offenders
