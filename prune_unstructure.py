"""Stage 2 (unstructured): magnitude-prune the dense model and finetune, one checkpoint per level.

    --m_prune iterative   prune --sparsity (default 0.3) of the remaining weights per level, from level
                          --iter_start to --iter_end, finetuning after each: 0.3, 0.51, 0.657, ... 0.9953
    --m_prune oneshot     prune the dense model directly to each target in --oneshot (0.95 0.98 0.99)
    --mask_from CKPT      mask transplant: the dense weights under CKPT's mask (e.g. a regrown model's),
                          finetuned with the same recipe, so a mask is measured apart from its training
                          history; written to {work_dir}/{m_name}/transplant/, its training FLOPs counting
                          the source's (what it took to find the mask)

Outputs, in {work_dir}/{m_name}/{iterative|oneshot|transplant}/:
    {m_name}_{sparsity}.pth      our checkpoint format, sparsity rounded to 4 decimals as published
    prune_log.jsonl              one row per level (also what --resume reads)
    prune_results.csv            sparsity, val and test accuracy per level
    {m_name}_{sparsity}_evals.jsonl  with --eval_every: validation accuracy every that many steps
    {m_name}_{sparsity}_steps{N}.pth with --save_at N: the state an N-step finetune ends with
    accuracy_vs_sparsity.png     the pruning curve

Finetune: AdamW lr 3e-4, weight decay 0.01, a step budget (published: 12,520 steps per iterative level,
125,200 one-shot; --finetune_epochs or --finetune_steps override), best-validation state kept.
"""
import argparse

from utils import cli
from utils.errors import BridgeError
from utils.checkpoints import check_model_name, load_checkpoint, model_sparsity_of_state
from utils.compute import recorded_flops
from utils.granularity import WEIGHTS
from utils.masks import transplant_masks
from utils.pruners import PRUNERS, weight_pruner_loader
from utils.pruning_run import PRUNING_MODES, PruningHparams, PruningPlan, level_schedule, run_pruning


def get_args_parser():
    p = argparse.ArgumentParser("prune_unstructure.py", description="Unstructured magnitude pruning + finetune")
    p.add_argument("--pruner", default="lamp", help=f"one of {', '.join(PRUNERS)}")
    p.add_argument("--m_prune", default="iterative", choices=sorted(PRUNING_MODES),
                   help="iterative (published spelling 'iterate' accepted) or oneshot")
    p.add_argument("--iter_start", type=int, default=1, help="first iterative level to produce (earlier ones are loaded)")
    p.add_argument("--iter_end", type=int, default=15, help="last iterative level (inclusive)")
    p.add_argument("--sparsity", type=float, default=0.3, help="iterative: fraction of the remaining weights pruned per level")
    p.add_argument("--oneshot", type=float, nargs="+", default=[0.95, 0.98, 0.99],
                   help="oneshot: target sparsities, each pruned directly from the dense model")
    p.add_argument("--mask_from", default=None,
                   help="mask transplant: train this checkpoint's mask from the dense weights (replaces --pruner)")
    PruningHparams.add_args(p, m_name="resnet20")
    return p


def main(args):
    hp = PruningHparams.from_args(args)
    schedule = level_schedule(args.m_prune, "--sparsity", args.sparsity, args.iter_start, args.iter_end, args.oneshot)
    arguments = hp.record(args)
    cli.print_args(arguments, "prune_unstructure.py")
    if args.mask_from:
        return run_pruning(hp, transplant_plan(args.mask_from, hp.source.m_name, hp.source.trust_pickle), arguments)
    pruner = weight_pruner_loader(args.pruner)
    mode = schedule["mode"]
    plan = PruningPlan(method=args.pruner, folder=mode, stage=f"prune_{mode}", granularity=WEIGHTS,
                       prune=lambda model, amount, data: pruner(model, amount), **schedule)
    return run_pruning(hp, plan, arguments)


def transplant_plan(mask_from, m_name, trust_pickle):
    """--mask_from: one level, the source checkpoint's mask on the dense weights."""
    source = load_checkpoint(mask_from, trust_pickle=trust_pickle)
    check_model_name(source, m_name, mask_from)
    state = source["state_dict"]
    sparsity = model_sparsity_of_state(state)
    if sparsity <= 0:
        raise BridgeError(f"--mask_from {mask_from}: the checkpoint holds no pruned mask")
    return PruningPlan(
        mode="oneshot", method="transplant", folder="transplant", stage="prune_transplant", granularity=WEIGHTS,
        prune=lambda model, amount, data: transplant_masks(model, state, mask_from),
        targets=[sparsity], inherited_flops=recorded_flops(source), inherited_from=mask_from)

if __name__ == "__main__":
    cli.run(main, get_args_parser())
