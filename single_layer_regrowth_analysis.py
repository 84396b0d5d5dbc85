"""Does SSIM predict where regrowth pays? Regrow the same budget into one layer at a time.

For every candidate layer (default: every masked conv with pruned weights) the same number of weights
(--regrow_count, or --regrow_frac of the layer's capacity) is regrown by saliency into that layer only,
the model is mini-finetuned, and its validation accuracy is compared with the sparse model given the
same mini-finetune without regrowth (same seed and data order), so the gain is what the regrown
weights add. Repeated over --seeds. The layers' SSIM (dense vs sparse feature maps) is then correlated
with the mean gain (Pearson and Spearman, with p-values): the method assumes low SSIM = high gain,
i.e. a negative correlation.

Outputs in {save_dir}/{m_name}/{model_sparsity}[_{tag}]/: single_layer.csv (per layer: SSIM, capacity,
regrown, gain per seed, mean, std), correlations.json, ssim_vs_gain.png (scatter, error bars, fit line),
ssim_per_layer.png.
"""
import argparse
import os
import time

from models import canonical_model_name
from utils import cli, paths
from utils.cache import default_cache_dir
from utils.errors import BridgeError
from utils.plots import plot_bars, plot_ssim_gain
from utils.progress import log
from utils.records import write_csv, write_json
from utils.regrowth.kinds import UnstructuredKind
from utils.regrowth.proxies import MiniFinetuneProxy
from utils.regrowth.env import RegrowthEnv
from utils.hparams import DataHparams, ModelSource, RuntimeHparams
from utils.regrowth.hparams import ControllerHparams, FinetuneHparams, RegrowthHparams, RewardHparams, SearchHparams
from utils.regrowth.setup import prepare, work_model_like
from utils.regrowth.weights import (INIT_ALIASES, INIT_STRATEGIES, WeightRegrower, canonical_init, dense_reference_weights,
                            layer_capacities)
from utils.runtime import Precision
from utils.ssim import layer_ssim
from utils.stats import correlations, mean_std
from utils.training import clone_state


def get_args_parser():
    p = argparse.ArgumentParser("single_layer_regrowth_analysis.py", description="SSIM vs single-layer regrowth gain")
    p.add_argument("--model_sparsity", default="0.98", help="sparsity label of the start model (default path)")
    p.add_argument("--initial_ckpt", default=None,
                   help="sparse model (default {work_dir}/{m_name}/oneshot/{m_name}_{model_sparsity}.pth)")
    ModelSource.add_args(p)
    p.add_argument("--save_dir", default="./single_layer_analysis")
    p.add_argument("--tag", default="")
    p.add_argument("--layers", nargs="+", default=None, help="layers to test (default: every masked conv with capacity)")
    p.add_argument("--regrow_count", type=int, default=None,
                   help="weights regrown per layer (default 0.1%% of all prunable weights)")
    p.add_argument("--regrow_frac", type=float, default=None, help="or: this fraction of each layer's capacity")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mini_finetune_epochs", type=float, default=1.0)
    p.add_argument("--mini_finetune_steps", type=int, default=None)
    p.add_argument("--init_strategy", default="zero", choices=INIT_STRATEGIES + tuple(INIT_ALIASES))
    p.add_argument("--ssim_num_batches", type=int, default=64)
    p.add_argument("--saliency_batches", type=int, default=None)
    p.add_argument("--reward_subset", type=int, default=None, help="mini-finetune on this many training images")
    p.add_argument("--reward_val_subset", type=int, default=None, help="score on this many validation images")
    p.add_argument("--cache_dir", default=default_cache_dir(),
                   help="cache of saliency / SSIM results ('' disables)")
    DataHparams.add_args(p)
    RuntimeHparams.add_args(p)
    return p


def main(args):
    args.m_name = canonical_model_name(args.m_name)
    args.init_strategy = canonical_init(args.init_strategy)
    if args.regrow_count is not None and args.regrow_frac is not None:
        raise BridgeError("give --regrow_count or --regrow_frac, not both")
    if args.regrow_frac is not None:
        cli.check_fraction("--regrow_frac", args.regrow_frac, low_inclusive=False)
    # every layer is a candidate, one at a time, and no budget term enters the comparison
    fixed = {"ssim_threshold": 1.0, "include_linear": False, "budget_bonus": 0.0}
    hp = RegrowthHparams(ModelSource.from_args(args), DataHparams.from_args(args), RuntimeHparams.from_args(args),
                         SearchHparams.from_args(args, **fixed), ControllerHparams(), RewardHparams.from_args(args),
                         FinetuneHparams())
    sparse_path = args.initial_ckpt or paths.pruned_checkpoint(args.work_dir, args.m_name, "oneshot", args.model_sparsity)
    record = {**vars(args), **fixed}
    cli.print_args(record, "single_layer_regrowth_analysis.py")
    t0 = time.perf_counter()
    setup, sparse, _ = prepare(hp, sparse_path, record)
    out_dir = os.path.join(args.save_dir, args.m_name, paths.run_name(args.model_sparsity, tag=args.tag))
    cli.check_writable(out_dir)
    caps = layer_capacities(sparse, setup.masked_names)
    ssim = layer_ssim(setup.dense, sparse, setup.data.val, setup.device, setup.masked_names, args.ssim_num_batches,
                      Precision(None, setup.precision.channels_last))
    layers = args.layers or [n for n in setup.masked_names if n in ssim and caps[n] > 0]
    unknown = [n for n in layers if n not in caps]
    if unknown:
        raise BridgeError(f"not masked layers of {args.m_name}: {', '.join(unknown)}")
    count = args.regrow_count if args.regrow_count is not None else max(1, int(0.001 * setup.total_weights))
    budget = {n: (max(1, int(args.regrow_frac * caps[n])) if args.regrow_frac is not None else min(count, caps[n]))
              for n in layers}
    kind = UnstructuredKind(setup)
    saliency = kind.saliency(layers)
    regrower = WeightRegrower(saliency, dense_reference_weights(setup.dense, layers), args.init_strategy)
    steps = hp.reward.steps(len(setup.data.train))
    work = work_model_like(setup, sparse.state_dict())
    start = clone_state(sparse)
    log(f"{len(layers)} layers x {len(args.seeds)} seeds, {steps} mini-finetune steps each; budget per layer "
        + (f"{args.regrow_frac:g} of its capacity" if args.regrow_frac is not None else f"{count:,} weights"))
    rows = {n: {"layer": n, "ssim": ssim.get(n), "capacity": caps[n], "regrown": budget[n]} for n in layers}
    for seed in args.seeds:
        env = RegrowthEnv(work, start, regrower, setup.reward_train, setup.reward_val, setup.device, setup.precision,
                          MiniFinetuneProxy(steps), lambda sp: 0.0, 0.0, setup.total_weights, seed)
        base = env.evaluate({}, 1, episode=0).val_acc  # the same mini-finetune, nothing regrown
        for i, n in enumerate(layers):
            res = env.evaluate({n: budget[n]}, budget[n], episode=i + 1)
            rows[n][f"acc_seed{seed}"] = res.val_acc
            rows[n][f"gain_seed{seed}"] = res.val_acc - base
            log(f"[seed {seed}] {n:<22} ssim {ssim.get(n, float('nan')):+.3f} | regrew {res.regrown:>6,} | "
                f"val {res.val_acc:.2f} vs {base:.2f} without regrowth ({res.val_acc - base:+.2f} pp)")
        for n in layers:
            rows[n][f"baseline_seed{seed}"] = base
    table = list(rows.values())
    for r in table:
        r["gain_mean"], r["gain_std"] = mean_std([r[f"gain_seed{s}"] for s in args.seeds])
    corr = correlations([r["ssim"] for r in table], [r["gain_mean"] for r in table])
    write_csv(os.path.join(out_dir, "single_layer.csv"), table)
    write_json(os.path.join(out_dir, "correlations.json"),
               {**corr, "seeds": args.seeds, "layers": len(table), "mini_finetune_steps": steps,
                "start_ckpt": sparse_path, "seconds": time.perf_counter() - t0, "args": record})
    scatter = plot_ssim_gain(table, os.path.join(out_dir, "ssim_vs_gain.png"),
                             f"{args.m_name} at {args.model_sparsity}: single-layer regrowth", corr)
    bars = plot_bars([r["layer"] for r in table], [r["ssim"] for r in table], os.path.join(out_dir, "ssim_per_layer.png"),
                     f"{args.m_name}: SSIM per layer (dense vs sparse)", "SSIM")
    log(f"SSIM vs gain over {corr['n']} layers: Pearson r = {corr['pearson_r']:+.3f} (p = {corr['pearson_p']:.3g}), "
        f"Spearman rho = {corr['spearman_rho']:+.3f} (p = {corr['spearman_p']:.3g})")
    log(f"wrote {out_dir}/single_layer.csv, correlations.json, {scatter}, {bars}")
    return {"rows": table, "correlations": corr}


if __name__ == "__main__":
    cli.run(main, get_args_parser())
