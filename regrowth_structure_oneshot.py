"""Stage 3 (structured, one step): regrow a budget of filters into a filter-pruned model, then finetune.

The same search as regrowth_oneshot.py over channel groups instead of layers (utils/regrowth/kinds.py):
SSIM per group (the lowest of its convs) picks and orders the search space, topped up by ascending SSIM
until it can hold the budget; the budget is floor(total dense filters * --sparsity_delta) filters,
allocated in whole channels (a channel of a coupled ResNet stage costs one filter per conv in the
stage); channels come back by dense-model score (--regrowth_score fisher Σg²w², or taylor Σ|g·w|) with
their dense filter and BatchNorm values (--init_strategy reference); the reward compares the
mini-finetuned val accuracy with the structured pruning curve in --baseline_dir at the new channel
sparsity (default: the folder of the start checkpoint; without a curve, the start model's accuracy
or --acc_threshold).

Outputs in {save_dir}/{m_name}/{method}/sp{start sparsity:.3f}[_{allocator}][_{tag}]/: as one-shot
weight regrowth (best_ep*.pth pre-finetune, baseline_exceeded_*.pth, final_finetuned.pth, episodes.jsonl,
search_summary.txt, summary.json, search_curves.png, allocation.png, search_state.pth).
"""
import argparse
import os

from utils import cli, paths
from utils.checkpoints import peek_checkpoint
from utils.errors import BridgeError
from utils.progress import log
from utils.pruning_curve import load_pruning_curve
from utils.regrowth.kinds import StructuredKind
from utils.regrowth.hparams import PolicyShape, RegrowthHparams
from utils.regrowth.oneshot import run_oneshot


def get_args_parser():
    p = argparse.ArgumentParser("regrowth_structure_oneshot.py", description="One-shot structured (filter) regrowth")
    RegrowthHparams.add_args(p, m_name="effnet", num_epochs=300, patience=40, ssim_num_batches=64,
                             save_dir=paths.STRUCTURED_SAVE_DIR, mini_epochs=50, structured=True)
    p.add_argument("--method", default="structured_oneshot", help="output folder name under {save_dir}/{m_name}/")
    p.add_argument("--initial_ckpt", "--pruned_ckpt", dest="initial_ckpt", required=True,
                   help="filter-pruned start model (a prune_structure.py checkpoint)")
    p.add_argument("--baseline_dir", default=None,
                   help="structured pruning curve (default: the folder of the start checkpoint; '' for none)")
    p.add_argument("--acc_threshold", type=float, default=-1,
                   help="reward reference without a curve (< 0: the start model's val accuracy)")
    p.add_argument("--sparsity_delta", type=float, default=0.01, help="budget as a fraction of all dense filters")
    p.add_argument("--alloc_space_size", type=int, default=10)
    return p


def curve_reference(baseline_dir, acc_threshold, start_path):
    """(setup, kind, sparse val acc) -> fn(sparsity): the pruning curve if there is one, else a constant."""
    folder = os.path.dirname(os.path.abspath(start_path)) if baseline_dir is None else baseline_dir

    def reference(setup, kind, sparse_val):
        if folder:
            try:
                curve = load_pruning_curve(folder)
                log(curve.describe() + f" from {folder}")
                return curve
            except BridgeError as exc:
                log(f"no pruning curve ({exc}); the reward compares with a constant")
        constant = acc_threshold if acc_threshold >= 0 else sparse_val
        return lambda sparsity: constant

    return reference


def main(args):
    hp = RegrowthHparams.from_args(args, structured=True)
    args.m_name = hp.source.m_name
    cli.check_fraction("--sparsity_delta", args.sparsity_delta, low_inclusive=False)
    start = peek_checkpoint(args.initial_ckpt, trust_pickle=args.trust_pickle)  # the sparsity label only; prepare() loads the weights
    name = paths.run_name(f"sp{float(start.get('sparsity') or 0):.3f}", args.allocator, args.tag)
    return run_oneshot(
        hp, StructuredKind, record=hp.record(args), sparse_path=args.initial_ckpt,
        script="regrowth_structure_oneshot.py", out_dir=os.path.join(args.save_dir, args.m_name, args.method, name),
        requested=lambda setup, kind: int(kind.total() * args.sparsity_delta),
        reference=curve_reference(args.baseline_dir, args.acc_threshold, args.initial_ckpt),
        shape=PolicyShape(args.alloc_space_size, clip=10.0, position="iterative", top_up=True))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
