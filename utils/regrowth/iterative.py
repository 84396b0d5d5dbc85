"""Iterative regrowth, the stage behind regrowth_iterative.py and regrowth_structure_iterative.py: per
iteration, the one-shot search with a budget searched too and a reward against the pruning curve; the best
episode's mini-finetuned model starts the next iteration."""
import glob
import os
import time

import torch

from utils import cli
from utils.checkpoints import jsonable, load_checkpoint, load_state_into
from utils.compute import ComputeLedger
from utils.errors import BridgeError
from utils.progress import log
from utils.pruning_curve import load_pruning_curve
from utils.records import WandbLog, append_jsonl, read_jsonl, write_jsonl
from utils.regrowth.env import RegrowthEnv
from utils.regrowth.final_finetune import final_finetune, regrown_since, weight_masks
from utils.regrowth.outputs import (plot_trajectory, save_model, write_iterative_text, write_search_outputs,
                                    write_summary)
from utils.regrowth.search import ensure_best_states, run_search, search_flops
from utils.regrowth.setup import (search_config, calibrated_reference, make_reinforce, prepare, reward_proxy,
                                  work_model_like)
from utils.training import clone_state, evaluate


def completed_iterations(run_dir):
    done = {}
    for path in glob.glob(os.path.join(run_dir, "iter_*", "best_grown_model.pth")):
        try:
            done[int(os.path.basename(os.path.dirname(path)).split("_")[1])] = path
        except ValueError:
            continue
    return done


def continue_from(run_dir, resume_iter, resume, setup, current):
    """The first iteration to run: --resume_iter, or with --resume the one after the last finished iteration
    (loaded into `current`, with the FLOPs it recorded as the run's ledger); else 0."""
    start_iter, done = 0, completed_iterations(run_dir)
    if resume_iter is not None:
        start_iter = resume_iter
    elif resume:
        while start_iter in done:
            start_iter += 1
    elif done:
        log(f"note: {run_dir} holds earlier iterations; they are overwritten (use --resume to continue them)")
    if start_iter > 0:
        prev = done.get(start_iter - 1)
        if prev is None:
            raise BridgeError(f"cannot start at iteration {start_iter}: {run_dir}/iter_{start_iter - 1}/"
                              "best_grown_model.pth does not exist")
        prev_ckpt = load_checkpoint(prev)
        load_state_into(current, {k: v.to(setup.device) for k, v in prev_ckpt["state_dict"].items()})
        setup.compute = ComputeLedger.starting_from(prev_ckpt, prev)  # its FLOPs include every earlier iteration's
        log(f"continuing after iteration {start_iter - 1}: {prev}")
    return start_iter


def run_iterative(hp, loop, kind_cls, *, record, baseline_dir, run_dir, script, shape):
    """Several regrowth steps, each rewarded against the pruning curve in `baseline_dir`.

    hp: RegrowthHparams; loop: IterativeHparams; record: the arguments as printed and stored;
    shape: the controller's PolicyShape (its action space is loop.alloc_space_size)."""
    loop.check(hp.reward)
    search, m_name, seed = hp.search, hp.source.m_name, hp.runtime.seed
    curve = load_pruning_curve(baseline_dir)
    sparse_path = loop.initial_ckpt or curve.sources[-1]
    cli.print_args(record, script)
    log(curve.describe() + f" from {baseline_dir}")
    t_run = time.perf_counter()
    setup, current, _ = prepare(hp, sparse_path, record)
    cli.check_writable(run_dir)  # after the checkpoints load: a rejected run leaves no empty folder behind
    start_masks = weight_masks(current)  # what every iteration's regrowth is measured from
    kind = kind_cls(setup)
    iter_log = os.path.join(run_dir, "iterations.jsonl")
    steps = hp.reward.steps(len(setup.data.train))
    budget_options = torch.linspace(loop.min_budget_frac, loop.max_budget_frac, loop.budget_space_size).tolist()

    start_iter = continue_from(run_dir, loop.resume_iter, search.resume, setup, current)
    rows = [r for r in read_jsonl(iter_log) if r["iteration"] < start_iter]
    if start_iter == 0:
        sp0 = kind.sparsity(current)
        v0, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        t0, _ = evaluate(current, setup.data.test, setup.device, setup.precision)
        rows = [{"iteration": -1, "sparsity": sp0, "val_acc": v0, "test_acc": t0, "baseline_val_acc": curve(sp0),
                 "path": sparse_path}]
    write_jsonl(iter_log, rows)
    wandb = WandbLog(search.wandb, "bridge_" + kind.stage_prefix + "_iterative",
                     f"{m_name}_{loop.start_sparsity or 'start'}", record)
    work = work_model_like(setup, current.state_dict())

    for it in range(start_iter, loop.num_iters):
        sp = kind.sparsity(current)
        if sp <= loop.target_sparsity + 1e-3:
            log(f"sparsity {sp:.4f} reached the target {loop.target_sparsity}")
            break
        cur_val, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        log(f"==== iteration {it}: {kind.describe(current)} | val {cur_val:.2f} | pruning curve there "
            f"{curve(sp):.2f} (gap {cur_val - curve(sp):+.2f} pp)")
        space = kind.search_space(current)
        if sum(space.capacities.values()) == 0:
            log("everything pruned in the search space is restored; stopping")
            break
        reference = calibrated_reference(setup, current, curve, cur_val)
        env = RegrowthEnv(work, clone_state(current), kind.regrower(space, current), setup.reward_train,
                          setup.reward_val, setup.device, setup.precision, reward_proxy(hp.reward, steps), reference,
                          search.budget_bonus, kind.total(), seed + it, macs=setup.macs)
        reinforce = make_reinforce(hp, shape, loop.budget_space_size) if search.allocator == "rl" else None
        cfg = search_config(hp, space, seed + it, budget_options=budget_options, position="iterative",
                            guard=kind.guard_layer(space),
                            top_up=kind.top_up_order(space, current) if shape.top_up else None)
        it_dir = os.path.join(run_dir, f"iter_{it}")
        resume_search = search.resume and os.path.isfile(os.path.join(it_dir, "search_state.pth"))
        t_it = time.perf_counter()
        outcome = run_search(env, space.names, space.ssim, space.capacities, cfg, reinforce, it_dir, resume_search,
                             on_episode=lambda e, r: wandb.log({"iteration": it, "episode": e + 1, "reward": r.reward}),
                             tag=f"iter {it} {search.allocator}")
        setup.compute.add("search", search_flops(outcome.rows))
        best = ensure_best_states(env, outcome)
        load_state_into(current, {k: v.to(setup.device) for k, v in best.post_state.items()})
        new_sp = kind.sparsity(current)
        val_acc, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        test_acc, _ = evaluate(current, setup.data.test, setup.device, setup.precision)
        path = save_model(os.path.join(it_dir, "best_grown_model.pth"), current, setup,
                          f"{kind.stage_prefix}_iterative_iter",
                          {"val_acc": val_acc, "test_acc": test_acc, "baseline_val_acc": curve(new_sp)}, kind,
                          iteration=it, allocation=best.allocation, reward=best.reward,
                          budget_frac=outcome.best_row().get("budget_frac"))
        write_search_outputs(it_dir, outcome.rows, space, best.allocation,
                             f"{m_name} iteration {it} ({search.allocator})")
        row = {"iteration": it, "sparsity": new_sp, "val_acc": val_acc, "test_acc": test_acc,
               "baseline_val_acc": curve(new_sp), "delta_baseline_pp": val_acc - curve(new_sp),
               "regrown": best.regrown, "best_reward": best.reward, "episodes": outcome.episodes,
               "stop_reason": outcome.stop_reason, "search_units": len(space.names),
               "seconds": time.perf_counter() - t_it, "allocation": best.allocation, "path": path}
        append_jsonl(iter_log, row)
        rows.append(row)
        log(f"==== iteration {it} done: sparsity {sp:.4f} -> {new_sp:.4f} | val {val_acc:.2f} (curve "
            f"{curve(new_sp):.2f}, {val_acc - curve(new_sp):+.2f} pp) | test {test_acc:.2f} | {row['seconds']:.0f} s "
            f"| {path}")
        if new_sp <= loop.target_sparsity + 1e-3:
            log(f"target sparsity {loop.target_sparsity} reached")
            break

    final_val, final_test = rows[-1]["val_acc"], rows[-1]["test_acc"]
    final_path = None
    ft_steps = hp.finetune.steps(len(setup.data.train))
    if ft_steps:
        regrown = regrown_since(start_masks, current)  # union of all iterations' regrown weights
        final_val, final_test, _ = final_finetune(setup, current, regrown, ft_steps,
                                                  evals_path=os.path.join(run_dir, "final_finetune_evals.jsonl"))
        final_path = save_model(os.path.join(run_dir, "final_finetuned.pth"), current, setup,
                                f"{kind.stage_prefix}_iterative_final", {"val_acc": final_val, "test_acc": final_test},
                                kind)
    final_sp = kind.sparsity(current)
    summary = {"model": m_name, "kind": kind.unit_label, "start_ckpt": sparse_path, "baseline_dir": baseline_dir,
               "iterations": rows, "final_sparsity": final_sp, "final_val_acc": final_val, "final_test_acc": final_test,
               "final_checkpoint": final_path, "mini_finetune_steps": steps, "final_finetune_steps": ft_steps,
               "training_flops": setup.compute.record(),
               "run_seconds": time.perf_counter() - t_run, "final_description": kind.describe(current),
               "seed": seed, "args": jsonable(record)}
    write_summary(run_dir, summary)
    write_iterative_text(run_dir, summary, curve.metric)
    png = plot_trajectory(run_dir, curve, rows, f"{m_name} iterative {kind.unit_label} regrowth")
    wandb.finish()
    log(f"final: sparsity {final_sp:.4f} | val {final_val:.2f} | test {final_test:.2f}")
    log(f"wrote {run_dir}/iter_*/best_grown_model.pth, {os.path.join(run_dir, 'search_summary.txt')}, {png}")
    return summary
