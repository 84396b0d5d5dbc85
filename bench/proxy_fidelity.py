"""Does the --fast proxy reward rank allocations like a long finetune does?

Samples --allocations allocations from an untrained controller (what an RL search explores first) for
a sparse model, scores each with the --fast proxy (100-step mini-finetune, 2,000-image validation
subset) and with a long finetune (--long_epochs epochs, full validation split), and prints both
rewards per allocation and their Spearman (and Pearson) correlation. Takes the regrowth_oneshot.py
arguments for the model, data and search space.

    python bench/proxy_fidelity.py --m_name resnet20 --dataset CIFAR10 --data_dir data \
        --initial_ckpt resnet20/oneshot/resnet20_0.98.pth --ssim_threshold 0.35 --allocations 10 --long_epochs 2
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import regrowth_oneshot  # noqa: E402
from utils.controller import RegrowthAgent, sample_allocation  # noqa: E402
from utils.regrowth_kinds import UnstructuredKind  # noqa: E402
from utils.regrowth_pipeline import FAST_PRESET, calibrated_reference, prepare, validate_search_args  # noqa: E402
from utils.regrowth_pipeline import work_model_like  # noqa: E402
from utils.regrowth_search import RegrowthEnv  # noqa: E402
from utils.stats import correlations  # noqa: E402
from utils.training import clone_state, evaluate  # noqa: E402


def main():
    p = regrowth_oneshot.get_args_parser()
    p.add_argument("--allocations", type=int, default=10)
    p.add_argument("--long_epochs", type=float, default=2.0)
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
    fast = RegrowthEnv(work, start, regrower, setup.reward_train, setup.reward_val, setup.device, setup.precision,
                       FAST_PRESET["mini_finetune_steps"], calibrated_reference(setup, sparse, lambda s: sparse_val),
                       args.budget_bonus, setup.total_weights, args.seed, keep_states=False)
    long_steps = int(round(args.long_epochs * len(setup.data.train)))
    slow = RegrowthEnv(work, start, regrower, setup.data.train, setup.data.val, setup.device, setup.precision,
                       long_steps, lambda s: sparse_val, args.budget_bonus, setup.total_weights, args.seed,
                       keep_states=False)
    torch.manual_seed(args.seed)
    agent = RegrowthAgent(args.action_space_size, args.hidden_size)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    print(f"{args.allocations} allocations of {budget:,} weights over {len(space.names)} layers; proxy: "
          f"{FAST_PRESET['mini_finetune_steps']} steps + {len(setup.reward_val.dataset)} val images; long: "
          f"{long_steps} steps ({args.long_epochs:g} epochs) + {len(setup.data.val.dataset)} val images")
    for i in range(args.allocations):
        alloc = sample_allocation(agent, space.names, space.capacities, budget=budget, generator=gen).allocation
        t0 = time.perf_counter()
        a = fast.evaluate(alloc, budget, i)
        t1 = time.perf_counter()
        b = slow.evaluate(alloc, budget, i)
        rows.append((a.reward, b.reward))
        print(f"  allocation {i + 1:>2}: proxy reward {a.reward:+.4f} ({t1 - t0:.0f} s) | long reward "
              f"{b.reward:+.4f} ({time.perf_counter() - t1:.0f} s) | {dict(list(alloc.items())[:4])} ...", flush=True)
    c = correlations([r[0] for r in rows], [r[1] for r in rows])
    print(f"Spearman rho = {c['spearman_rho']:+.3f} (p = {c['spearman_p']:.3g}), "
          f"Pearson r = {c['pearson_r']:+.3f} (p = {c['pearson_p']:.3g}), n = {c['n']}")


if __name__ == "__main__":
    main()
