"""How well does each reward proxy rank allocations like a long finetune does, and at what cost?

Draws --allocations allocations around the search's region: samples of an untrained controller (what
an RL search explores first), then the one-allocation allocators (--include_allocators: uniform,
proportional, greedy). Each is scored
  * by every proxy (utils/regrowth/proxies.py), once per allocation as in a search:
      steps     --proxy_steps mini-finetune lengths x --proxy_schedules (x --proxy_seeds data orders);
      bn        --bn_batches BatchNorm re-estimations, each scored by accuracy and by loss, on
                --bn_val_images validation images;
      saliency  the restored share of the search space's saliency;
      gradient  the freed share of the start model's gradient magnitude at pruned positions;
  * by a long reward: --long_epochs epochs of finetune on the full training split (as given) scored on
    the full validation split, --long_seeds data orders; their mean is the "true" reward.
Prints, and with --out writes (fidelity.md, fidelity.json, fidelity.png: cost vs rho), per proxy the
Spearman rho with the mean long reward, its bootstrap 95% interval (allocations resampled), the rank of
the long-best allocation, and the median seconds per episode; plus the noise ceiling (how well one long
seed ranks the allocations like another). Takes the regrowth_oneshot.py arguments for the model, data and
search space. Every finished evaluation is appended to --rows (JSON lines); a rerun with the same arguments
skips it, so the benchmark is resumable and new proxies can be added to finished long rewards.

    python bench/proxy_fidelity.py --m_name resnet20 --dataset CIFAR10 --data_dir data --train_limit 15000 \
        --initial_ckpt runs/proxy/resnet20/oneshot/resnet20_0.97.pth --regrow_step 0.02 --ssim_threshold 0.35 \
        --init_strategy reference --allocations 20 --long_epochs 2 --long_seeds 2 \
        --proxy_steps 150 --proxy_seeds 1 --bn_batch_counts 4 8 16 --rows results/proxy/rows.jsonl --out results/proxy
"""
import itertools
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import regrowth_oneshot  # noqa: E402
from utils.allocators import allocate  # noqa: E402
from utils.controller import RegrowthAgent, sample_allocation  # noqa: E402
from utils.errors import BridgeError  # noqa: E402
from utils.records import append_jsonl, read_jsonl, write_json  # noqa: E402
from utils.regrowth.kinds import UnstructuredKind  # noqa: E402
from utils.regrowth.hparams import FAST_PRESET, RegrowthHparams  # noqa: E402
from utils.regrowth.setup import calibrated_reference, prepare  # noqa: E402
from utils.regrowth.setup import work_model_like  # noqa: E402
from utils.regrowth.env import RegrowthEnv  # noqa: E402
from utils.regrowth.proxies import (LR_SCHEDULES, BatchNormProxy, GradientProxy, MiniFinetuneProxy,  # noqa: E402
                                  SaliencyProxy)
from utils.stats import bootstrap_spearman, correlations  # noqa: E402
from utils.training import clone_state, evaluate  # noqa: E402

DETERMINISTIC = ("uniform", "proportional", "greedy")


def get_args_parser():
    p = regrowth_oneshot.get_args_parser()
    p.add_argument("--allocations", type=int, default=20, help="allocations in all (controller samples + fixed ones)")
    p.add_argument("--include_allocators", nargs="*", default=list(DETERMINISTIC), choices=DETERMINISTIC,
                   help="one-allocation allocators scored beside the controller's samples (last in the list)")
    p.add_argument("--first", type=int, default=None,
                   help="score only the first N drawn allocations (a look while the long rewards are still running)")
    p.add_argument("--score_allocations", nargs="*", default=[],
                   help="summary.json files of regrowth runs: their best allocations are scored too (after the "
                        "others; not part of the rho, which is over the drawn allocations only)")
    p.add_argument("--proxy_steps", type=int, nargs="*", default=[FAST_PRESET["mini_finetune_steps"]],
                   help="steps proxy: mini-finetune lengths to compare (none: no steps proxy)")
    p.add_argument("--proxy_schedules", nargs="+", default=[FAST_PRESET["mini_finetune_schedule"]],
                   choices=LR_SCHEDULES,
                   help="steps proxy: learning-rate schedules (cosine: annealed to 0 over the proxy's steps)")
    p.add_argument("--proxy_seeds", type=int, default=FAST_PRESET["reward_repeats"],
                   help="steps proxy: runs per allocation and setting (data-order seeds seed, seed + 1, ...): "
                        "their mean is the --reward_repeats reward; their spread measures one run's noise")
    p.add_argument("--proxy_train_images", type=int, default=None,
                   help="steps proxy: train on a fixed subset of this many training images (default: all)")
    p.add_argument("--bn_batch_counts", type=int, nargs="*", default=[4, 8, 16],
                   help="bn proxy: training batches for the statistics (none: no bn proxy)")
    p.add_argument("--bn_val_images", type=int, nargs="*", default=None,
                   help="bn proxy: validation images scored (default: the --reward_val_subset)")
    p.add_argument("--no_saliency", action="store_true", help="leave the training-free saliency / gradient proxies out")
    p.add_argument("--long_epochs", type=float, default=2.0)
    p.add_argument("--long_seeds", type=int, default=2, help="long finetunes per allocation (data-order seeds)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the rho intervals")
    p.add_argument("--rows", default=None, help="JSON-lines file of finished evaluations (reused on a rerun)")
    p.add_argument("--out", default=None, help="folder for fidelity.md / fidelity.json / fidelity.png")
    return p


def allocations_from_runs(paths, space):
    """(label, best allocation) of each regrowth run's summary.json, checked against the search space."""
    out = []
    for path in paths:
        with open(path) as fh:
            summary = json.load(fh)
        alloc = {k: int(v) for k, v in summary["best_allocation"].items()}
        unknown = set(alloc) - set(space.names)
        if unknown:
            raise BridgeError(f"{path}: its allocation regrows layers outside this search space: {sorted(unknown)}")
        out.append((f"{summary.get('allocator', 'run')} best ({os.path.dirname(path)})", alloc))
    return out


def draw_allocations(agent, space, budget, count, fixed, seed):
    """count allocations: count - len(fixed) samples of the controller, then the fixed allocators' ones."""
    gen = torch.Generator().manual_seed(seed)
    out = [(f"controller sample {i + 1}", sample_allocation(agent, space.names, space.capacities, budget=budget,
                                                           generator=gen).allocation)
           for i in range(count - len(fixed))]
    return out + [(name, allocate(name, space.names, space.ssim, space.capacities, budget)) for name in fixed]


def summarise(rewards, seconds, long_names, n_boot):
    """Per scored series: rho vs the mean long reward, bootstrap interval, rank of the long-best, median s."""
    long_mean = [statistics.mean(v) for v in zip(*(rewards[n] for n in long_names))]
    top = max(range(len(long_mean)), key=long_mean.__getitem__)
    table = []
    for name, values in rewards.items():
        if name in long_names or "@seed" in name or any(math.isnan(v) for v in values):
            continue  # (a further seed of a steps proxy enters through the mean of seeds)
        c = correlations(values, long_mean)
        lo, hi = bootstrap_spearman(values, long_mean, n_boot)
        table.append({"proxy": name, "rho": c["spearman_rho"], "rho_low": lo, "rho_high": hi, "p": c["spearman_p"],
                      "pearson_r": c["pearson_r"],
                      "single_long_rho": [correlations(values, rewards[n])["spearman_rho"] for n in long_names],
                      "rank_of_long_best": 1 + sorted(values, reverse=True).index(values[top]),
                      "seconds_per_episode": statistics.median(seconds[name]) if seconds.get(name) else math.nan})
    ceiling = {}
    if len(long_names) > 1:
        pairs = [correlations(rewards[a], rewards[b])["spearman_rho"] for a, b in itertools.combinations(long_names, 2)]
        ceiling = {"long_seed_vs_long_seed_rho": pairs,
                   "seconds_per_long_run": statistics.median(s for n in long_names for s in seconds[n])}
    return table, ceiling, long_mean


def write_outputs(out, table, ceiling, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "fidelity.json"), {"proxies": table, "noise_ceiling": ceiling, **meta})
    lines = [f"# Reward proxies vs the long reward ({meta['title']})", "",
             f"{meta['n']} allocations; long reward: {meta['long']}. Spearman rho with the mean long reward, "
             "bootstrap 95% interval (allocations resampled), rank the proxy gives the long-best allocation, "
             "median seconds per episode (regrowth + proxy).", "",
             "| proxy | rho | 95% interval | rank of long-best | s / episode |", "|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: r["seconds_per_episode"]):
        lines.append(f"| {r['proxy']} | {r['rho']:+.2f} | [{r['rho_low']:+.2f}, {r['rho_high']:+.2f}] | "
                     f"{r['rank_of_long_best']} of {meta['n']} | {r['seconds_per_episode']:.2f} |")
    if ceiling:
        lines += ["", "Noise ceiling: long seed vs long seed rho "
                  + ", ".join(f"{x:+.2f}" for x in ceiling["long_seed_vs_long_seed_rho"])
                  + f"; one long run takes {ceiling['seconds_per_long_run']:.0f} s."]
    with open(os.path.join(out, "fidelity.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    for i, r in enumerate(table):  # a loss-scored variant sits a little right of its accuracy-scored twin
        x = max(r["seconds_per_episode"], 1e-3) * (1.12 if r["proxy"].endswith(" loss") else 1.0)
        ax.errorbar([x], [r["rho"]], yerr=[[r["rho"] - r["rho_low"]], [r["rho_high"] - r["rho"]]], fmt="o", capsize=3,
                    color=plt.cm.tab20(i % 20), label=r["proxy"])
    if ceiling:
        ax.axhline(statistics.mean(ceiling["long_seed_vs_long_seed_rho"]), ls="--", c="gray",
                   label="long seed vs long seed (noise ceiling)")
    ax.axhline(0.7, ls=":", c="k", label="target rho 0.7")
    ax.axvline(3.0, ls=":", c="r", label="target 3 s / episode")
    ax.set_xscale("log")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("seconds per episode (log)")
    ax.set_ylabel("Spearman rho with the long reward")
    ax.set_title(meta["title"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fidelity.png"), dpi=130)
    plt.close(fig)


def main():
    args = get_args_parser().parse_args()
    args.fast = True
    hp = RegrowthHparams.from_args(args)
    args.m_name = hp.source.m_name
    t_bench = time.perf_counter()
    sparse_path = args.initial_ckpt or os.path.join(args.work_dir, args.m_name, "oneshot",
                                                    f"{args.m_name}_{args.model_sparsity}.pth")
    setup, sparse, _ = prepare(hp, sparse_path, hp.record(args))
    kind = UnstructuredKind(setup)
    space = kind.search_space(sparse)
    budget = min(int(setup.total_weights * args.regrow_step), sum(space.capacities.values()))
    regrower = kind.regrower(space)
    sparse_val, _ = evaluate(sparse, setup.data.val, setup.device, setup.precision)
    work = work_model_like(setup, sparse.state_dict())
    start = clone_state(sparse)
    proxy_ref = calibrated_reference(setup, sparse, lambda s: sparse_val)
    long_steps = int(round(args.long_epochs * len(setup.data.train)))
    proxy_train = (setup.data.subset("train", args.proxy_train_images, seed=args.seed) if args.proxy_train_images
                   else setup.reward_train)
    val_sets = {n: setup.data.subset("val", n, seed=args.seed) for n in (args.bn_val_images or [])}

    def env(proxy, train, val, seed, reference=proxy_ref):
        return RegrowthEnv(work, start, regrower, train, val, setup.device, setup.precision, proxy, reference,
                           args.budget_bonus, setup.total_weights, seed, keep_states=False)

    # (name, make the env, metrics to read from its result); names of steps / long runs as in earlier rows
    runs = []
    for sc in args.proxy_schedules:
        for s in args.proxy_steps:
            for k in range(args.proxy_seeds):
                name = (f"proxy{s}" + ("" if sc == "constant" else f"_{sc}")
                        + (f"_train{args.proxy_train_images}" if args.proxy_train_images else "")
                        + (f"@seed{k}" if k else ""))
                runs.append((name, lambda s=s, sc=sc, k=k: env(MiniFinetuneProxy(s, sc), proxy_train, setup.reward_val,
                                                              args.seed + k), ("acc", "loss")))
    for b in args.bn_batch_counts:
        for n in args.bn_val_images or [None]:
            runs.append((f"bn{b}" + (f"_val{n}" if n else ""),
                         lambda b=b, n=n: env(BatchNormProxy(b), setup.reward_train, val_sets.get(n, setup.reward_val),
                                              args.seed), ("acc", "loss")))
    if not args.no_saliency:
        runs.append(("saliency", lambda: env(SaliencyProxy(), setup.reward_train, setup.reward_val, args.seed),
                     ("share",)))
        runs.append(("gradient", lambda: env(GradientProxy(kind.pruned_gradient(sparse, space.names)),
                                             setup.reward_train, setup.reward_val, args.seed), ("share",)))
    runs += [(f"long_seed{k}", lambda k=k: env(MiniFinetuneProxy(long_steps), setup.data.train, setup.data.val,
                                                args.seed + k, lambda s: sparse_val), ("acc",))
             for k in range(args.long_seeds)]

    torch.manual_seed(args.seed)
    agent = RegrowthAgent(args.action_space_size, args.hidden_size)
    fixed = [a for a in DETERMINISTIC if a in args.include_allocators]
    allocations = draw_allocations(agent, space, budget, args.allocations, fixed, args.seed)[:args.first]
    drawn = len(allocations)
    allocations += allocations_from_runs(args.score_allocations, space)
    done = {(r["allocation_index"], r["run"]): r for r in (read_jsonl(args.rows) if args.rows else [])
            if r["allocation_index"] < len(allocations)
            and r.get("allocation") == allocations[r["allocation_index"]][1]}
    kept_fixed = [lab for lab, _ in allocations[:drawn] if lab in DETERMINISTIC]
    print(f"{drawn} allocations ({drawn - len(kept_fixed)} controller samples"
          + (f" + {', '.join(kept_fixed)}" if kept_fixed else "") + ")"
          + (f" + {len(allocations) - drawn} regrowth runs' best" if len(allocations) > drawn else "")
          + f" of {budget:,} weights over {len(space.names)} layers; "
          f"proxies: {', '.join(n for n, _, _ in runs if not n.startswith('long'))}; long: {long_steps} steps "
          f"({args.long_epochs:g} epochs) + {len(setup.data.val.dataset)} val images, {args.long_seeds} seed(s)"
          + (f"; {len(done)} evaluations reused from {args.rows}" if done else ""), flush=True)
    envs = {}
    rewards, seconds = {}, {}
    for i, (label, alloc) in enumerate(allocations):
        usage = sum(alloc.values()) / max(budget, 1)
        line = []
        for name, make_env, metrics in runs:
            row = done.get((i, name))
            if row is None:
                if name not in envs:
                    envs[name] = make_env()
                t0 = time.perf_counter()
                res = envs[name].evaluate(alloc, budget, i)
                row = {"allocation_index": i, "label": label, "run": name, "allocation": alloc, "reward": res.reward,
                       "val_acc": res.val_acc, "val_loss": res.val_loss, "restored_share": res.restored_share,
                       "usage": res.usage, "seconds": time.perf_counter() - t0}
                if args.rows:
                    append_jsonl(args.rows, row)
            for metric in metrics:
                key = name if metric in ("acc", "share") else f"{name} loss"
                if key == name:
                    value = row["reward"]
                else:  # rows written before losses were recorded have none
                    loss = row.get("val_loss")
                    value = math.nan if loss is None else -loss + args.budget_bonus * usage
                rewards.setdefault(key, []).append(value)
                seconds.setdefault(key, []).append(row["seconds"])
            line.append(f"{name} {row['reward']:+.4f} ({row['seconds']:.1f} s)")
        print(f"  {i + 1:>2} {label}: {' | '.join(line)}", flush=True)

    long_names = [n for n, _, _ in runs if n.startswith("long")]
    proxies = {}  # steps settings run with several seeds -> their mean, the --reward_repeats reward
    for n in list(rewards):
        if "@seed" in n:
            base = n.split("@")[0] + (" loss" if n.endswith(" loss") else "")
            proxies.setdefault(base, [base]).append(n)
    for base, names in proxies.items():
        mean_name = base.replace(" loss", "") + f" x{len(names)}" + (" loss" if base.endswith(" loss") else "")
        rewards[mean_name] = [statistics.mean(v) for v in zip(*(rewards[n] for n in names))]
        seconds[mean_name] = [sum(v) for v in zip(*(seconds[n] for n in names))]
    extra = {lab: {n: v[i] for n, v in rewards.items()} for i, (lab, _) in enumerate(allocations) if i >= drawn}
    rewards = {n: v[:drawn] for n, v in rewards.items()}
    seconds = {n: v[:drawn] for n, v in seconds.items()}
    table, ceiling, long_mean = summarise(rewards, seconds, long_names, args.bootstrap)
    print(f"\nSpearman rho with the mean long reward over {len(long_names)} seed(s), n = {drawn} "
          f"(bootstrap 95% interval, {args.bootstrap} resamples):")
    for r in sorted(table, key=lambda r: r["seconds_per_episode"]):
        print(f"  {r['proxy']:<28} rho {r['rho']:+.3f} [{r['rho_low']:+.2f}, {r['rho_high']:+.2f}] (p {r['p']:.3g}); "
              f"vs single long seeds {', '.join(f'{s:+.2f}' for s in r['single_long_rho'])}; long-best ranked "
              f"#{r['rank_of_long_best']}; {r['seconds_per_episode']:.2f} s / episode")
    if ceiling:
        print(f"  noise ceiling: long seed vs long seed rho "
              f"{', '.join(f'{s:+.2f}' for s in ceiling['long_seed_vs_long_seed_rho'])}; "
              f"{ceiling['seconds_per_long_run']:.0f} s per long run")
    ranked = sorted(range(drawn), key=lambda i: -long_mean[i])
    print("long reward (mean of seeds) of the drawn allocations, best first: "
          + ", ".join(f"{allocations[i][0]} {long_mean[i]:+.4f}" for i in ranked[:5]) + " ..."
          + "".join(f"; {allocations[i][0]} {long_mean[i]:+.4f}" for i in ranked
                    if allocations[i][0] in DETERMINISTIC))
    for label, values in extra.items():
        long_values = [values[n] for n in long_names]
        mean = statistics.mean(long_values)
        print(f"  {label}: long reward {mean:+.4f} (seeds {', '.join(f'{v:+.4f}' for v in long_values)}); "
              f"would rank #{1 + sum(m > mean for m in long_mean)} of the {drawn} drawn allocations")
    print(f"benchmark wall time this run: {time.perf_counter() - t_bench:.0f} s")
    if args.out:
        meta = {"title": f"{args.m_name}, {os.path.basename(sparse_path)}, budget {budget:,} weights, "
                         f"init {hp.search.init_strategy}",
                "n": drawn, "long": f"{long_steps} steps ({args.long_epochs:g} epochs of "
                                               f"{len(setup.data.train.dataset):,} images), full validation split, "
                                               f"mean of {len(long_names)} data orders",
                "budget": budget, "start": sparse_path, "allocation_labels": [lab for lab, _ in allocations[:drawn]],
                "long_reward_mean": long_mean,
                "scored_runs": {lab: {n: values[n] for n in long_names} for lab, values in extra.items()}}
        write_outputs(args.out, table, ceiling, meta)
        print(f"wrote {args.out}/fidelity.md, fidelity.json, fidelity.png")


if __name__ == "__main__":
    main()
