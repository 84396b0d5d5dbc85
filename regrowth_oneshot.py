"""Stage 3 (unstructured, one step): regrow a global budget of weights into a sparse model, then finetune.

    1. SSIM feature drift per masked conv layer (dense vs sparse) -> search space, ascending SSIM
    2. saliency (dL/dθ)²·θ² of every weight of those layers, on the dense model
    3. budget K = min(int(total prunable weights * --regrow_step), total capacity of the search space)
    4. search: each episode an allocation of K over the layers (LSTM controller + REINFORCE, or another
       --allocator), regrown by saliency, mini-finetuned, rewarded by
       (val acc - sparse model's val acc)/100 + --budget_bonus * usage
    5. the best allocation is finetuned (--finetune_epochs) and evaluated on val and test

Outputs in {save_dir}/{m_name}/oneshot/{model_sparsity}[_{allocator}][_{tag}]/:
    best_ep{E}_rwd{reward}.pth           best regrown model, before any finetune (newest best only)
    baseline_exceeded_ep{E}_acc{acc}.pth  episodes whose accuracy beat --acc_baseline (pre-finetune)
    final_finetuned.pth                  the best allocation after the final finetune (val/test metrics)
    episodes.jsonl                       one row per episode; search_summary.txt, summary.json
    search_curves.png, allocation.png    reward/entropy per episode; the best allocation per layer
    search_state.pth                     what --resume needs
"""
import argparse
import os

from utils import cli, paths
from utils.errors import BridgeError
from utils.regrowth.kinds import UnstructuredKind
from utils.regrowth.hparams import PolicyShape, RegrowthHparams
from utils.regrowth.oneshot import run_oneshot


def get_args_parser():
    p = argparse.ArgumentParser("regrowth_oneshot.py", description="One-shot SSIM + RL + saliency weight regrowth")
    RegrowthHparams.add_args(p, m_name="effnet", num_epochs=400, patience=50, ssim_num_batches=64,
                    save_dir=paths.ONESHOT_SAVE_DIR, mini_epochs=50)
    p.add_argument("--model_sparsity", default="0.98",
                   help="sparsity label of the start model (default path and output folder)")
    p.add_argument("--initial_ckpt", default=None,
                   help="sparse start model (default {work_dir}/{m_name}/oneshot/{m_name}_{model_sparsity}.pth)")
    p.add_argument("--regrow_step", type=float, default=0.01, help="budget as a fraction of all prunable weights")
    p.add_argument("--action_space_size", type=int, default=11, help="ratio options j/A, j = 1..A")
    p.add_argument("--fill_budget", action="store_true",
                   help="rl: hand the budget the controller left unused to the search layers, lowest SSIM first, "
                        "so every allocation regrows exactly the budget (compare arms at equal sparsity); "
                        "the published controller may leave part of it unused")
    p.add_argument("--acc_baseline", type=float, default=None,
                   help="accuracy as a fraction (e.g. 0.9175): episodes above it also save a checkpoint")
    return p


def output_dir(args):
    return os.path.join(args.save_dir, args.m_name, "oneshot", paths.run_name(args.model_sparsity, args.allocator, args.tag))


def main(args):
    hp = RegrowthHparams.from_args(args)
    args.m_name = hp.source.m_name
    cli.check_fraction("--regrow_step", args.regrow_step, low_inclusive=False)
    if args.acc_baseline is not None and not 0 < args.acc_baseline <= 1:
        raise BridgeError(f"--acc_baseline is a fraction in (0, 1], got {args.acc_baseline}")
    sparse_path = args.initial_ckpt or paths.pruned_checkpoint(args.work_dir, args.m_name, "oneshot", args.model_sparsity)
    return run_oneshot(
        hp, UnstructuredKind, record=hp.record(args), sparse_path=sparse_path, out_dir=output_dir(args),
        script="regrowth_oneshot.py", requested=lambda setup, kind: int(setup.total_weights * args.regrow_step),
        reference=lambda setup, kind, sparse_val: (lambda sparsity: sparse_val),
        shape=PolicyShape(args.action_space_size, clip=100.0, position="oneshot", top_up=args.fill_budget),
        acc_baseline=args.acc_baseline)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
