"""Stage 3 (unstructured, several steps): regrow in iterations, each with its own searched budget.

Per iteration: SSIM (dense vs current model) -> search space; the controller first picks the step's
budget from linspace(--min_budget_frac, --max_budget_frac, --budget_space_size) of all prunable weights,
then splits it over the layers; each episode is regrown by saliency (computed once, on the dense
model, for every masked layer), mini-finetuned, and rewarded against the pruning curve of
--baseline_dir interpolated at the new sparsity:

    reward = (val acc - curve(sparsity)) / 100 + --budget_bonus * usage

The best episode's mini-finetuned model starts the next iteration; the run stops after --num_iters
iterations or once the sparsity reaches --target_sparsity.

Outputs in {save_dir}/{m_name}/{method}[_{tag}]/:
    iter_{i}/best_grown_model.pth    best model of iteration i (after its mini-finetune)
    iter_{i}/episodes.jsonl, search_curves.png, allocation.png, search_state.pth
    iterations.jsonl, summary.json, search_summary.txt, trajectory.png (iterations over the pruning curve)
    final_finetuned.pth              only with --finetune_epochs > 0

Note: the published script's --finetune_epochs (default 40) is the per-episode finetune; here that is
--mini_finetune_epochs (same default), and --finetune_epochs is a final finetune of the last model.
"""
import argparse
import glob
import os
import time

import torch

from utils import cli
from utils.checkpoints import load_checkpoint, load_state_into
from utils.errors import BridgeError
from utils.masks import count_pruned_params, model_sparsity
from utils.plots import plot_accuracy_vs_sparsity
from utils.progress import log
from utils.pruning_curve import load_pruning_curve
from utils.records import WandbLog, append_jsonl, read_jsonl, write_json, write_jsonl
from utils.regrowth import WeightRegrower, dense_reference_weights
from utils.regrowth_pipeline import (add_search_args, compute_saliency, final_finetune, make_reinforce,
                                     mini_finetune_steps, prepare, save_model, search_space, validate_search_args,
                                     work_model_like, write_search_outputs)
from utils.regrowth_search import RegrowthEnv, SearchConfig, ensure_best_states, run_search
from utils.saliency import layer_mean_saliency
from utils.training import clone_state, evaluate

PUBLISHED_MINI_FINETUNE_EPOCHS = 40


def get_args_parser():
    p = argparse.ArgumentParser("regrowth_iterative.py", description="Iterative SSIM + RL + saliency regrowth")
    add_search_args(p, m_name="effnet", num_epochs=300, patience=40, ssim_num_batches=128, save_dir="./rl_checkpoints")
    p.add_argument("--method", default="iterative", help="output folder name under {save_dir}/{m_name}/")
    p.add_argument("--baseline_dir", default=None,
                   help="pruning curve folder (default {work_dir}/{m_name}/iterative)")
    p.add_argument("--initial_ckpt", default=None,
                   help="sparse start model (default: the sparsest checkpoint of --baseline_dir)")
    p.add_argument("--start_sparsity", type=float, default=None, help="label only (printed; the published run name)")
    p.add_argument("--target_sparsity", type=float, default=0.97, help="stop once the sparsity is at most this")
    p.add_argument("--num_iters", type=int, default=2)
    p.add_argument("--budget_space_size", type=int, default=5)
    p.add_argument("--alloc_space_size", type=int, default=10)
    p.add_argument("--min_budget_frac", type=float, default=0.001)
    p.add_argument("--max_budget_frac", type=float, default=0.005)
    p.add_argument("--reward_temperature", type=float, default=0.005,
                   help="accepted for compatibility: the iterative advantage is scaled by the reward-window std")
    p.add_argument("--entropy_coef", type=float, default=0.5, help="accepted for compatibility (unused, as published)")
    p.add_argument("--resume_iter", type=int, default=None,
                   help="restart at this iteration from iter_{k-1}/best_grown_model.pth (default with --resume: "
                        "after the last finished iteration)")
    return p


def completed_iterations(run_dir):
    done = {}
    for path in glob.glob(os.path.join(run_dir, "iter_*", "best_grown_model.pth")):
        try:
            done[int(os.path.basename(os.path.dirname(path)).split("_")[1])] = path
        except ValueError:
            continue
    return done


def main(args):
    validate_search_args(args)
    cli.check_fraction("--target_sparsity", args.target_sparsity)
    for name in ("min_budget_frac", "max_budget_frac"):
        cli.check_fraction(f"--{name}", getattr(args, name), low_inclusive=False)
    if args.min_budget_frac > args.max_budget_frac or args.budget_space_size < 1:
        raise BridgeError("need --min_budget_frac <= --max_budget_frac and --budget_space_size >= 1")
    baseline_dir = args.baseline_dir or os.path.join(args.work_dir, args.m_name, "iterative")
    curve = load_pruning_curve(baseline_dir)
    sparse_path = args.initial_ckpt or curve.sources[-1]
    cli.print_args(args, "regrowth_iterative.py")
    log(curve.describe() + f" from {baseline_dir}")
    t_run = time.perf_counter()
    setup, current, _ = prepare(args, sparse_path)
    run_dir = os.path.join(args.save_dir, args.m_name, args.method + (f"_{args.tag}" if args.tag else ""))
    os.makedirs(run_dir, exist_ok=True)
    iter_log = os.path.join(run_dir, "iterations.jsonl")

    saliency = compute_saliency(setup, setup.masked_names)
    mean_sal = layer_mean_saliency(saliency)
    reference = dense_reference_weights(setup.dense, setup.masked_names)
    steps = mini_finetune_steps(args, len(setup.data.train), PUBLISHED_MINI_FINETUNE_EPOCHS)
    budget_options = torch.linspace(args.min_budget_frac, args.max_budget_frac, args.budget_space_size).tolist()

    start_iter = 0
    done = completed_iterations(run_dir)
    if args.resume_iter is not None:
        start_iter = args.resume_iter
    elif args.resume:
        while start_iter in done:
            start_iter += 1
    elif done:
        log(f"note: {run_dir} holds earlier iterations; they are overwritten (use --resume to continue them)")
    if start_iter > 0:
        prev = done.get(start_iter - 1)
        if prev is None:
            raise BridgeError(f"cannot start at iteration {start_iter}: {run_dir}/iter_{start_iter - 1}/"
                              "best_grown_model.pth does not exist")
        load_state_into(current, {k: v.to(setup.device) for k, v in load_checkpoint(prev)["state_dict"].items()})
        log(f"continuing after iteration {start_iter - 1}: {prev}")
    rows = [r for r in read_jsonl(iter_log) if r["iteration"] < start_iter]
    write_jsonl(iter_log, rows)
    if start_iter == 0:
        sp0 = model_sparsity(current)
        v0, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        t0, _ = evaluate(current, setup.data.test, setup.device, setup.precision)
        rows = [{"iteration": -1, "sparsity": sp0, "val_acc": v0, "test_acc": t0, "baseline_val_acc": curve(sp0),
                 "path": sparse_path}]
        write_jsonl(iter_log, rows)
    wandb = WandbLog(args.wandb, "bridge_iterative", f"{args.m_name}_{args.start_sparsity or 'start'}", vars(args))
    work = work_model_like(setup, current.state_dict())

    for it in range(start_iter, args.num_iters):
        sp = model_sparsity(current)
        if sp <= args.target_sparsity + 1e-3:
            log(f"sparsity {sp:.4f} reached the target {args.target_sparsity}")
            break
        cur_val, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        log(f"==== iteration {it}: sparsity {sp:.4f} | val {cur_val:.2f} | pruning curve there {curve(sp):.2f} "
            f"(gap {cur_val - curve(sp):+.2f} pp)")
        names, ssim, caps = search_space(setup, current)
        if sum(caps.values()) == 0:
            log("all pruned weights of the search space are restored; stopping")
            break
        guard = max((n for n in names if caps[n] > 0), key=lambda n: mean_sal.get(n, 0.0))
        env = RegrowthEnv(work, clone_state(current), WeightRegrower(saliency, reference, args.init_strategy),
                          setup.data, setup.device, setup.precision, steps, curve, args.budget_bonus,
                          setup.total_weights, args.seed + it)
        reinforce = (make_reinforce(args, True, args.alloc_space_size, args.budget_space_size)
                     if args.allocator == "rl" else None)
        cfg = SearchConfig(allocator=args.allocator, num_episodes=args.num_epochs, budget_options=budget_options,
                           position="iterative", guard_layer=guard, seed=args.seed + it)
        it_dir = os.path.join(run_dir, f"iter_{it}")
        resume_search = args.resume and os.path.isfile(os.path.join(it_dir, "search_state.pth"))
        t_it = time.perf_counter()
        outcome = run_search(env, names, ssim, caps, cfg, reinforce, it_dir, resume_search,
                             on_episode=lambda e, r: wandb.log({"iteration": it, "episode": e + 1, "reward": r.reward}),
                             tag=f"iter {it} {args.allocator}")
        best = ensure_best_states(env, outcome)
        load_state_into(current, {k: v.to(setup.device) for k, v in best.post_state.items()})
        new_sp = model_sparsity(current)
        val_acc, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        test_acc, _ = evaluate(current, setup.data.test, setup.device, setup.precision)
        path = save_model(os.path.join(it_dir, "best_grown_model.pth"), current, setup, "regrowth_iterative_iter",
                          {"val_acc": val_acc, "test_acc": test_acc, "baseline_val_acc": curve(new_sp)},
                          iteration=it, allocation=best.allocation, reward=best.reward,
                          budget_frac=outcome.best_row().get("budget_frac"))
        write_search_outputs(it_dir, outcome.rows, names, best.allocation, caps, ssim,
                             f"{args.m_name} iteration {it} ({args.allocator})")
        row = {"iteration": it, "sparsity": new_sp, "val_acc": val_acc, "test_acc": test_acc,
               "baseline_val_acc": curve(new_sp), "delta_baseline_pp": val_acc - curve(new_sp),
               "regrown": best.regrown, "best_reward": best.reward, "episodes": outcome.episodes,
               "stop_reason": outcome.stop_reason, "search_layers": len(names), "seconds": time.perf_counter() - t_it,
               "allocation": best.allocation, "path": path}
        append_jsonl(iter_log, row)
        rows.append(row)
        log(f"==== iteration {it} done: sparsity {sp:.4f} -> {new_sp:.4f} | val {val_acc:.2f} (curve {curve(new_sp):.2f}, "
            f"{val_acc - curve(new_sp):+.2f} pp) | test {test_acc:.2f} | {row['seconds']:.0f} s | {path}")
        if new_sp <= args.target_sparsity + 1e-3:
            log(f"target sparsity {args.target_sparsity} reached")
            break

    final_val, final_test = rows[-1]["val_acc"], rows[-1]["test_acc"]
    final_path = None
    if args.finetune_epochs:
        final_val, final_test, _ = final_finetune(setup, current, {}, args.finetune_epochs)
        final_path = save_model(os.path.join(run_dir, "final_finetuned.pth"), current, setup,
                                "regrowth_iterative_final", {"val_acc": final_val, "test_acc": final_test})
    final_sp = model_sparsity(current)
    summary = {"model": args.m_name, "start_ckpt": sparse_path, "baseline_dir": baseline_dir, "iterations": rows,
               "final_sparsity": final_sp, "final_val_acc": final_val, "final_test_acc": final_test,
               "final_checkpoint": final_path, "mini_finetune_steps": steps, "run_seconds": time.perf_counter() - t_run,
               "nonzero_weights": count_pruned_params(current)[1]}
    write_json(os.path.join(run_dir, "summary.json"), summary)
    with open(os.path.join(run_dir, "search_summary.txt"), "w") as fh:
        fh.write(f"model: {args.m_name}\nstart: {sparse_path}\npruning curve: {baseline_dir} ({curve.metric})\n")
        fh.write(f"{'iter':>4} {'sparsity':>9} {'val acc':>8} {'curve':>8} {'delta pp':>9} {'test acc':>9}\n")
        for r in rows:
            fh.write(f"{r['iteration']:>4} {r['sparsity']:>9.4f} {r['val_acc']:>8.2f} {r['baseline_val_acc']:>8.2f} "
                     f"{r['val_acc'] - r['baseline_val_acc']:>+9.2f} {r['test_acc']:>9.2f}\n")
        fh.write(f"final: sparsity {final_sp:.4f}, val {final_val:.2f}, test {final_test:.2f}\n")
    png = plot_accuracy_vs_sparsity({"pruning curve (val)": curve.points},
                                    os.path.join(run_dir, "trajectory.png"), f"{args.m_name} iterative regrowth",
                                    points={"regrowth iterations (val)": [(r["sparsity"], r["val_acc"]) for r in rows]},
                                    arrows=[((a["sparsity"], a["val_acc"]), (b["sparsity"], b["val_acc"]))
                                            for a, b in zip(rows, rows[1:])])
    wandb.finish()
    log(f"final: sparsity {final_sp:.4f} | val {final_val:.2f} | test {final_test:.2f}")
    log(f"wrote {run_dir}/iter_*/best_grown_model.pth, {os.path.join(run_dir, 'search_summary.txt')}, {png}")
    return summary


if __name__ == "__main__":
    cli.run(main, get_args_parser())
