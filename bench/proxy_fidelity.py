"""Does the --fast proxy reward rank allocations like a long finetune does?

Samples --allocations allocations from an untrained controller (what an RL search explores first) for
a sparse model and scores each
  * with the proxy of --proxy_steps mini-finetune steps (one run per allocation, as in a search;
    several step counts and --proxy_schedules may be compared side by side) on the --fast
    validation subset, and
  * with a long finetune (--long_epochs epochs, full validation split) under --long_seeds seeds (the
    seed sets the data order; their mean is the "true" reward).
Prints every reward, then per proxy length the Spearman (and Pearson) correlation with the mean long
reward, and the noise ceiling: how well one long seed ranks the allocations like another (a proxy
cannot be expected to agree with a single long run better than two long runs agree with each other).
Takes the regrowth_oneshot.py arguments for the model, data and search space. Every finished
evaluation is appended to --rows (JSON lines); rerunning with the same arguments skips them.

    python bench/proxy_fidelity.py --m_name resnet20 --dataset CIFAR10 --data_dir data \
        --initial_ckpt resnet20/oneshot/resnet20_0.98.pth --ssim_threshold 0.35 --allocations 10 \
        --long_epochs 2 --long_seeds 3 --proxy_steps 100 150 200 --rows runs/proxy_fidelity.jsonl
"""
import itertools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import regrowth_oneshot  # noqa: E402
from utils.controller import RegrowthAgent, sample_allocation  # noqa: E402
from utils.records import append_jsonl, read_jsonl  # noqa: E402
from utils.regrowth_kinds import UnstructuredKind  # noqa: E402
from utils.regrowth_pipeline import FAST_PRESET, calibrated_reference, prepare, validate_search_args  # noqa: E402
from utils.regrowth_pipeline import work_model_like  # noqa: E402
from utils.regrowth_search import LR_SCHEDULES, RegrowthEnv  # noqa: E402
from utils.stats import correlations  # noqa: E402
from utils.training import clone_state, evaluate  # noqa: E402


def main():
    p = regrowth_oneshot.get_args_parser()
    p.add_argument("--allocations", type=int, default=10)
    p.add_argument("--proxy_steps", type=int, nargs="+", default=[FAST_PRESET["mini_finetune_steps"]],
                   help="proxy mini-finetune lengths to compare (default: the --fast preset's)")
    p.add_argument("--proxy_schedules", nargs="+", default=[FAST_PRESET["mini_finetune_schedule"]],
                   choices=LR_SCHEDULES,
                   help="proxy learning-rate schedules to compare (cosine: annealed to 0 over the proxy's steps)")
    p.add_argument("--proxy_seeds", type=int, default=FAST_PRESET["reward_repeats"],
                   help="proxy runs per allocation and setting (data-order seeds seed, seed + 1, ...): their mean "
                        "is the --reward_repeats reward; their spread measures one run's noise")
    p.add_argument("--long_epochs", type=float, default=2.0)
    p.add_argument("--long_seeds", type=int, default=3, help="long finetunes per allocation (data-order seeds)")
    p.add_argument("--rows", default=None, help="JSON-lines file of finished evaluations (reused on a rerun)")
    args = p.parse_args()
    args.fast = True
    validate_search_args(args)
    sparse_path = args.initial_ckpt or os.path.join(args.work_dir, args.m_name, "oneshot",
                                                    f"{args.m_name}_{args.model_sparsity}.pth")
    setup, sparse, _ = prepare(args, sparse_path)
    kind = UnstructuredKind(setup)
    space = kind.search_space(sparse)
    budget = min(int(setup.total_weights * args.regrow_step), sum(space.capacities.values()))
    regrower = kind.regrower(space)
    sparse_val, _ = evaluate(sparse, setup.data.val, setup.device, setup.precision)
    work = work_model_like(setup, sparse.state_dict())
    start = clone_state(sparse)
    proxy_ref = calibrated_reference(setup, sparse, lambda s: sparse_val)
    long_steps = int(round(args.long_epochs * len(setup.data.train)))

    def proxy_env(steps_schedule_seed):
        steps, schedule, seed = steps_schedule_seed
        return RegrowthEnv(work, start, regrower, setup.reward_train, setup.reward_val, setup.device,
                           setup.precision, steps, proxy_ref, args.budget_bonus, setup.total_weights, seed,
                           keep_states=False, lr_schedule=schedule)

    def long_env(seed):
        return RegrowthEnv(work, start, regrower, setup.data.train, setup.data.val, setup.device, setup.precision,
                           long_steps, lambda s: sparse_val, args.budget_bonus, setup.total_weights, seed,
                           keep_states=False)

    runs = [(f"proxy{s}" + ("" if sc == "constant" else f"_{sc}") + (f"@seed{k}" if k else ""), proxy_env,
             (s, sc, args.seed + k))
            for sc in args.proxy_schedules for s in args.proxy_steps for k in range(args.proxy_seeds)]
    runs += [(f"long_seed{k}", long_env, args.seed + k) for k in range(args.long_seeds)]
    torch.manual_seed(args.seed)
    agent = RegrowthAgent(args.action_space_size, args.hidden_size)
    gen = torch.Generator().manual_seed(args.seed)
    allocations = [sample_allocation(agent, space.names, space.capacities, budget=budget, generator=gen).allocation
                   for _ in range(args.allocations)]
    done = {(r["allocation_index"], r["run"]): r for r in (read_jsonl(args.rows) if args.rows else [])
            if r["allocation_index"] < len(allocations) and r.get("allocation") == allocations[r["allocation_index"]]}
    print(f"{args.allocations} allocations of {budget:,} weights over {len(space.names)} layers; proxies: "
          f"{', '.join(map(str, args.proxy_steps))} steps ({'/'.join(args.proxy_schedules)} lr) + "
          f"{len(setup.reward_val.dataset)} val images; long: "
          f"{long_steps} steps ({args.long_epochs:g} epochs) + {len(setup.data.val.dataset)} val images, "
          f"{args.long_seeds} seed(s)" + (f"; {len(done)} evaluations reused from {args.rows}" if done else ""))
    rewards = {name: [] for name, _, _ in runs}
    for i, alloc in enumerate(allocations):
        line = []
        for name, make_env, param in runs:
            row = done.get((i, name))
            if row is None:
                t0 = time.perf_counter()
                res = make_env(param).evaluate(alloc, budget, i)
                row = {"allocation_index": i, "run": name, "allocation": alloc, "reward": res.reward,
                       "val_acc": res.val_acc, "seconds": time.perf_counter() - t0}
                if args.rows:
                    append_jsonl(args.rows, row)
            rewards[name].append(row["reward"])
            line.append(f"{name} {row['reward']:+.4f} ({row['seconds']:.0f} s)")
        print(f"  allocation {i + 1:>2}: {' | '.join(line)} | {dict(list(alloc.items())[:4])} ...", flush=True)
    long_names = [n for n in rewards if n.startswith("long")]
    long_mean = [statistics.mean(v) for v in zip(*(rewards[n] for n in long_names))]
    print(f"\nSpearman rho (Pearson r) with the mean long reward over {len(long_names)} seed(s), "
          f"n = {args.allocations}:")
    proxies = {n: [n] for n in rewards if n.startswith("proxy") and "@" not in n}  # a setting -> its seeds
    for n in rewards:
        if "@" in n:
            proxies[n.split("@")[0]].append(n)
    for name, seeds in list(proxies.items()):
        if len(seeds) > 1:
            rewards[name + " (mean of seeds)"] = [statistics.mean(v) for v in zip(*(rewards[n] for n in seeds))]
            pairs = [correlations(rewards[a], rewards[b])["spearman_rho"] for a, b in itertools.combinations(seeds, 2)]
            print(f"  {name[5:]} proxy, seed vs seed: rho {', '.join(f'{r:+.2f}' for r in pairs)}")
    for name in rewards:
        if name.startswith("proxy"):
            c = correlations(rewards[name], long_mean)
            single = [correlations(rewards[name], rewards[n])["spearman_rho"] for n in long_names]
            top = max(range(len(long_mean)), key=long_mean.__getitem__)
            print(f"  {name[5:]:>4} proxy: rho = {c['spearman_rho']:+.3f} (p = {c['spearman_p']:.3g}), "
                  f"r = {c['pearson_r']:+.3f} (p = {c['pearson_p']:.3g}); vs single long seeds rho "
                  f"{', '.join(f'{s:+.2f}' for s in single)}; ranks the long-best allocation "
                  f"#{1 + sorted(rewards[name], reverse=True).index(rewards[name][top])}")
    if len(long_names) > 1:
        pairs = [correlations(rewards[a], rewards[b])["spearman_rho"] for a, b in itertools.combinations(long_names, 2)]
        loo = [correlations(rewards[n], [statistics.mean(v) for v in zip(*(rewards[m] for m in long_names if m != n))])
               ["spearman_rho"] for n in long_names]
        print(f"  noise ceiling: long seed vs long seed rho {', '.join(f'{s:+.2f}' for s in pairs)} "
              f"(mean {statistics.mean(pairs):+.3f}); one long seed vs the mean of the others rho "
              f"{', '.join(f'{s:+.2f}' for s in loo)} (mean {statistics.mean(loo):+.3f})")


if __name__ == "__main__":
    main()
