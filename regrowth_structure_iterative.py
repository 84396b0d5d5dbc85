"""Stage 3 (structured, several steps): regrow filters in iterations, each with its own searched budget.

regrowth_iterative.py over channel groups (see regrowth_structure_oneshot.py for the unit): per
iteration the controller picks the budget from linspace(--min_budget_frac, --max_budget_frac,
--budget_space_size) of all dense filters, then splits it over the searched groups (leftover budget
goes to the groups whose pruned channels score highest, as published); the reward compares with the
structured pruning curve in --baseline_dir (default {work_dir}/{m_name}/structured_iterative). Coupled
channels are restored in every conv of their group, and the budget counts all of them, so no
"safe layer" filter on ResNet shortcuts is needed (the published script dropped shortcut layers).

Outputs in {save_dir}/{m_name}/{method}[_{allocator}][_{tag}]/: iter_{i}/best_grown_model.pth and the
same logs and plots as regrowth_iterative.py; --finetune_scope regrown trains only the filters restored
in some iteration, and --reward_val_subset calibrates the curve as there.
"""
import argparse
import os

from utils import cli, paths
from utils.regrowth.kinds import StructuredKind
from utils.regrowth.hparams import IterativeHparams, PolicyShape, RegrowthHparams
from utils.regrowth.iterative import run_iterative


def get_args_parser():
    p = argparse.ArgumentParser("regrowth_structure_iterative.py", description="Iterative structured (filter) regrowth")
    RegrowthHparams.add_args(p, m_name="resnet20", num_epochs=300, patience=40, ssim_num_batches=64,
                             save_dir=paths.STRUCTURED_SAVE_DIR, mini_epochs=40, structured=True)
    IterativeHparams.add_args(p, budget_space_size=6, min_frac=0.005, max_frac=0.01, num_iters=5, target_sparsity=0.0)
    p.set_defaults(method="structured_iterative")
    return p


def main(args):
    hp, loop = RegrowthHparams.from_args(args, structured=True), IterativeHparams.from_args(args)
    args.m_name = hp.source.m_name
    name = paths.run_name(args.method, args.allocator, args.tag)
    baseline = args.baseline_dir or os.path.join(args.work_dir, args.m_name, "structured_iterative")
    return run_iterative(
        hp, loop, StructuredKind, record=hp.record(args), baseline_dir=baseline,
        run_dir=os.path.join(args.save_dir, args.m_name, name), script="regrowth_structure_iterative.py",
        shape=PolicyShape(args.alloc_space_size, clip=10.0, position="iterative", top_up=True))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
