"""Stage 3 (unstructured, several steps): regrow in iterations, each with its own searched budget.

Per iteration: SSIM (dense vs current model) -> search space; the controller first picks the step's
budget from linspace(--min_budget_frac, --max_budget_frac, --budget_space_size) of all prunable weights,
then splits it over the layers; each episode is regrown by saliency (dense model, cached across
iterations), mini-finetuned, and rewarded against the pruning curve of --baseline_dir interpolated at
the new sparsity:

    reward = (val acc - curve(sparsity)) / 100 + --budget_bonus * usage

With --reward_val_subset, episodes are scored on that validation subset and the curve is shifted by
acc(subset) - acc(full val) of the model the iteration starts from (as in regrowth_oneshot.py).

The best episode's mini-finetuned model starts the next iteration; the run stops after --num_iters
iterations or once the sparsity reaches --target_sparsity.

Outputs in {save_dir}/{m_name}/{method}[_{allocator}][_{tag}]/:
    iter_{i}/best_grown_model.pth    best model of iteration i (after its mini-finetune)
    iter_{i}/episodes.jsonl, search_curves.png, allocation.png, search_state.pth
    iterations.jsonl, summary.json, search_summary.txt, trajectory.png (iterations over the pruning curve)
    final_finetuned.pth              only with --finetune_epochs > 0 (--finetune_scope regrown: only the
                                     weights regrown in some iteration train)

Note: the published script's --finetune_epochs (default 40) is the per-episode finetune; here that is
--mini_finetune_epochs (same default), and --finetune_epochs is a final finetune of the last model.
"""
import argparse
import os

from utils import cli, paths
from utils.regrowth.kinds import UnstructuredKind
from utils.regrowth.hparams import IterativeHparams, PolicyShape, RegrowthHparams
from utils.regrowth.iterative import run_iterative


def get_args_parser():
    p = argparse.ArgumentParser("regrowth_iterative.py", description="Iterative SSIM + RL + saliency weight regrowth")
    RegrowthHparams.add_args(p, m_name="effnet", num_epochs=300, patience=40, ssim_num_batches=128,
                             save_dir=paths.ITERATIVE_SAVE_DIR, mini_epochs=40)
    IterativeHparams.add_args(p, budget_space_size=5, min_frac=0.001, max_frac=0.005, num_iters=2, target_sparsity=0.97)
    return p


def main(args):
    hp, loop = RegrowthHparams.from_args(args), IterativeHparams.from_args(args)
    args.m_name = hp.source.m_name
    name = paths.run_name(args.method, args.allocator, args.tag)
    return run_iterative(
        hp, loop, UnstructuredKind, record=hp.record(args),
        baseline_dir=args.baseline_dir or os.path.join(args.work_dir, args.m_name, "iterative"),
        run_dir=os.path.join(args.save_dir, args.m_name, name), script="regrowth_iterative.py",
        shape=PolicyShape(args.alloc_space_size, clip=10.0, advantage="window_std", position="iterative"))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
