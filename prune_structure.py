"""Stage 2 (structured): prune whole filters (Conv2d output channels) as masks, and finetune.

A pruned filter's weight row, conv bias and BatchNorm weight and bias are masked, so the channel
outputs exactly zero and regrowth can bring it back; coupled channels (ResNet residual stages,
EfficientNet expand/depthwise/SE) are pruned together (see utils/structured.py). Every group keeps at
least one channel; Linear layers (the classifier) are never pruned.

    --m_prune iterative   prune --ratio_per_step (default 0.3) of the alive channels per level, levels
                          --iter_start..--iter_end (published: 15 steps; VGG16 0.301, 0.513, 0.659, ...)
    --m_prune oneshot     prune the dense model directly to each channel sparsity in --oneshot

--pruner picks the filter importance, Torch-Pruning's group importances as published (see
utils/structured_importance.py): l1, l2 (group magnitude over the filters, BatchNorm weights and
consumer columns), lamp, taylor (|w·g| from --importance_batches training batches, published 1),
hessian (OBD from per-sample gradients of --importance_batches batches, published 4); --scope local
(every group loses the same fraction, published) or global (the library's one ranking over all groups). Outputs in {work_dir}/{m_name}/structured_{iterative|oneshot}/:
{m_name}_{channel sparsity}.pth, prune_log.jsonl, prune_results.csv (channel sparsity, weight
sparsity, parameter and MAC ratios of the compact model, val and test accuracy),
accuracy_vs_sparsity.png; with --save_compact also {m_name}_{sparsity}_compact.pth (filters removed).
"""
import argparse
import itertools

from models import model_loader, model_spec
from utils import cli
from utils.compact import check_equivalence, export_compact, save_compact
from utils.costs import model_cost
from utils.errors import BridgeError
from utils.granularity import FILTERS
from utils.masks import model_sparsity
from utils.progress import log
from utils.pruning_run import PRUNING_MODES, PruningHparams, PruningPlan, level_schedule, run_pruning
from utils.structured import SCOPES, channel_groups
from utils.structured_importance import (GRADIENT_IMPORTANCE, IMPORTANCE, PUBLISHED_GRADIENT_BATCHES,
                                         check_importance, prune_channels)


def get_args_parser():
    p = argparse.ArgumentParser("prune_structure.py", description="Structured (filter) pruning with masks + finetune")
    p.add_argument("--pruner", default="taylor", help=f"filter importance: {', '.join(IMPORTANCE)}")
    p.add_argument("--scope", default="local", choices=SCOPES, help="local: same fraction per group; global: one ranking")
    p.add_argument("--m_prune", default="iterative", choices=sorted(PRUNING_MODES))
    p.add_argument("--ratio_per_step", "--sparsity", dest="ratio_per_step", type=float, default=0.3,
                   help="iterative: fraction of the alive channels pruned per level")
    p.add_argument("--iter_start", type=int, default=1)
    p.add_argument("--iter_end", "--iterative_steps", dest="iter_end", type=int, default=15)
    p.add_argument("--oneshot", type=float, nargs="+", default=[0.5, 0.7, 0.9],
                   help="oneshot: target channel sparsities, each pruned directly from the dense model")
    p.add_argument("--importance_batches", "--taylor_batches", dest="importance_batches", type=int, default=None,
                   help="training batches for the taylor / hessian importance (default: published 1 / 4)")
    p.add_argument("--save_compact", action="store_true", help="also write each level with its filters removed")
    PruningHparams.add_args(p, m_name="vgg16")
    return p


def main(args):
    hp = PruningHparams.from_args(args)
    m_name, dataset = hp.source.m_name, hp.data.dataset
    check_importance(args.pruner)
    schedule = level_schedule(args.m_prune, "--ratio_per_step", args.ratio_per_step, args.iter_start, args.iter_end,
                              args.oneshot)
    arguments = hp.record(args)
    cli.print_args(arguments, "prune_structure.py")
    size = model_spec(m_name, dataset).input_size
    groups = channel_groups(model_loader(m_name, dataset=dataset), size)
    log(f"{len(groups)} channel groups; coupled groups (more than one conv per channel): "
        + (", ".join(f"{g.root} x{g.cost}" for g in groups if g.cost > 1) or "none"))
    dense_cost = model_cost(model_loader(m_name, dataset=dataset), size)

    n_batches = (PUBLISHED_GRADIENT_BATCHES.get(args.pruner, 0) if args.importance_batches is None
                 else args.importance_batches)
    if args.pruner in GRADIENT_IMPORTANCE and n_batches < 1:
        raise BridgeError(f"--importance_batches must be at least 1 for --pruner {args.pruner}")

    def prune(model, amount, data):
        batches = list(itertools.islice(data.train, n_batches)) if args.pruner in GRADIENT_IMPORTANCE else None
        prune_channels(model, size, amount, args.pruner, args.scope, batches)

    compacts = {}  # the level's compact model, from its metrics to its --save_compact file

    def extra_metrics(model):
        compact = compacts["last"] = export_compact(model, size)
        cost = model_cost(compact, size)
        diff = check_equivalence(model, compact, size)
        return {"weight_sparsity": model_sparsity(model), "compact_params": cost["params"],
                "param_ratio": cost["params"] / dense_cost["params"], "compact_macs": cost["macs"],
                "mac_ratio": cost["macs"] / dense_cost["macs"], "compact_max_abs_diff": diff}

    def save_compact_level(model, path):
        out = path[: -len(".pth")] + "_compact.pth"
        save_compact(out, compacts.pop("last"), m_name, model, size, dataset)
        log(f"compact model: {out}")

    mode = schedule["mode"]
    plan = PruningPlan(
        method=f"{args.pruner}-{args.scope}", folder=f"structured_{mode}", stage=f"prune_structured_{mode}",
        granularity=FILTERS, prune=prune, extra_metrics=extra_metrics,
        on_saved=save_compact_level if args.save_compact else None, **schedule)
    return run_pruning(hp, plan, arguments)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
