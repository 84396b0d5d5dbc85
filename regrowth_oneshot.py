"""Stage 3 (unstructured, one step): regrow a global budget into a sparse model, then finetune.

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
import glob
import os
import time

from utils import cli
from utils.errors import BridgeError
from utils.progress import log
from utils.records import WandbLog, write_json
from utils.regrowth import WeightRegrower, dense_reference_weights
from utils.regrowth_pipeline import (add_search_args, compute_saliency, final_finetune, make_reinforce,
                                     mini_finetune_steps, prepare, save_model, search_space, validate_search_args,
                                     work_model_like, write_search_outputs)
from utils.regrowth_search import RegrowthEnv, SearchConfig, run_search
from utils.masks import model_sparsity
from utils.training import clone_state, evaluate

PUBLISHED_MINI_FINETUNE_EPOCHS = 50


def get_args_parser():
    p = argparse.ArgumentParser("regrowth_oneshot.py", description="One-shot SSIM + RL + saliency regrowth")
    add_search_args(p, m_name="effnet", num_epochs=400, patience=50, ssim_num_batches=64,
                    save_dir="./rl_saliency_oneshot")
    p.add_argument("--model_sparsity", default="0.98",
                   help="sparsity label of the start model (default path and output folder)")
    p.add_argument("--initial_ckpt", default=None,
                   help="sparse start model (default {work_dir}/{m_name}/oneshot/{m_name}_{model_sparsity}.pth)")
    p.add_argument("--regrow_step", type=float, default=0.01, help="budget as a fraction of all prunable weights")
    p.add_argument("--action_space_size", type=int, default=11, help="ratio options j/A, j = 1..A")
    p.add_argument("--reward_temperature", type=float, default=0.005, help="advantage scale τ")
    p.add_argument("--entropy_coef", type=float, default=0.5, help="accepted for compatibility (unused, as published)")
    p.add_argument("--acc_baseline", type=float, default=None,
                   help="accuracy as a fraction (e.g. 0.9175): episodes above it also save a checkpoint")
    return p


def output_dir(args):
    name = str(args.model_sparsity) + ("" if args.allocator == "rl" else f"_{args.allocator}")
    name += f"_{args.tag}" if args.tag else ""
    return os.path.join(args.save_dir, args.m_name, "oneshot", name)


def main(args):
    validate_search_args(args)
    cli.check_fraction("--regrow_step", args.regrow_step, low_inclusive=False)
    if args.acc_baseline is not None and not 0 < args.acc_baseline <= 1:
        raise BridgeError(f"--acc_baseline is a fraction in (0, 1], got {args.acc_baseline}")
    sparse_path = args.initial_ckpt or os.path.join(args.work_dir, args.m_name, "oneshot",
                                                    f"{args.m_name}_{args.model_sparsity}.pth")
    cli.print_args(args, "regrowth_oneshot.py")
    t_run = time.perf_counter()
    setup, sparse, _ = prepare(args, sparse_path)
    out_dir = output_dir(args)
    os.makedirs(out_dir, exist_ok=True)

    names, ssim, caps = search_space(setup, sparse)
    requested = int(setup.total_weights * args.regrow_step)
    budget = min(requested, sum(caps.values()))
    log(f"total prunable weights {setup.total_weights:,} | requested {requested:,} ({args.regrow_step:g}) | "
        f"capacity of the search space {sum(caps.values()):,} | budget {budget:,}"
        + (f" (clamped to the capacity of {len(names)} layer(s))" if budget < requested else ""))
    if budget <= 0:
        raise BridgeError("the search space has no pruned weight to regrow")
    saliency = compute_saliency(setup, names)
    sparse_val, _ = evaluate(sparse, setup.data.val, setup.device, setup.precision)
    sparse_test, _ = evaluate(sparse, setup.data.test, setup.device, setup.precision)
    start_sparsity = model_sparsity(sparse)
    log(f"sparse start {sparse_path}: sparsity {start_sparsity:.4f}, val {sparse_val:.2f}, test {sparse_test:.2f}")

    steps = mini_finetune_steps(args, len(setup.data.train), PUBLISHED_MINI_FINETUNE_EPOCHS)
    regrower = WeightRegrower(saliency, dense_reference_weights(setup.dense, names), args.init_strategy)
    env = RegrowthEnv(work_model_like(setup, sparse.state_dict()), clone_state(sparse), regrower, setup.data,
                      setup.device, setup.precision, steps, lambda sp: sparse_val, args.budget_bonus,
                      setup.total_weights, args.seed)
    reinforce = make_reinforce(args, False, args.action_space_size) if args.allocator == "rl" else None
    wandb = WandbLog(args.wandb, "bridge_oneshot", f"regrowth_{args.m_name}_{args.model_sparsity}", vars(args))
    log(f"search: allocator {args.allocator}, up to {args.num_epochs} episodes, mini-finetune {steps} steps "
        f"({steps / len(setup.data.train):.2f} epochs) per episode")

    def on_best(e, result):
        for old in glob.glob(os.path.join(out_dir, "best_ep*_rwd*.pth")):
            os.remove(old)
        env.model.load_state_dict(result.pre_state)
        save_model(os.path.join(out_dir, f"best_ep{e + 1}_rwd{result.reward:+.4f}.pth"), env.model, setup,
                   "regrowth_oneshot_best_prefinetune", {"val_acc_after_mini_finetune": result.val_acc},
                   allocation=result.allocation, episode=e + 1, reward=result.reward, start_ckpt=sparse_path)

    def on_episode(e, result):
        wandb.log({"episode": e + 1, "reward": result.reward, "acc": result.val_acc, "usage": result.usage})
        if args.acc_baseline is not None and result.val_acc / 100 > args.acc_baseline:
            env.model.load_state_dict(result.pre_state)
            save_model(os.path.join(out_dir, f"baseline_exceeded_ep{e + 1}_acc{result.val_acc:.2f}.pth"), env.model,
                       setup, "regrowth_oneshot_baseline_exceeded", {"val_acc_after_mini_finetune": result.val_acc},
                       allocation=result.allocation, episode=e + 1)

    cfg = SearchConfig(allocator=args.allocator, num_episodes=args.num_epochs, budget=budget, position="oneshot",
                       seed=args.seed)
    outcome = run_search(env, names, ssim, caps, cfg, reinforce, out_dir, args.resume, on_best, on_episode,
                         tag=f"oneshot {args.allocator}")
    best = outcome.best
    log(f"search done: {outcome.episodes} episodes in {outcome.seconds:.0f} s ({outcome.stop_reason}); best episode "
        f"{outcome.best_episode + 1}: val {best.val_acc:.2f} after mini-finetune (sparse start {sparse_val:.2f}), "
        f"reward {best.reward:+.4f}")

    # final finetune of the best allocation, from its regrown (pre-finetune) state: regrowing again
    # with the best episode's init seed rebuilds exactly the state saved as best_ep*.pth
    regrown_idx, _ = env.regrow(best.allocation, outcome.best_episode)
    final = env.model
    ft_epochs = args.finetune_epochs if args.finetune_epochs is not None else 0
    val_acc, test_acc, ft = final_finetune(setup, final, regrown_idx, ft_epochs)
    final_sparsity = model_sparsity(final)
    final_path = save_model(os.path.join(out_dir, "final_finetuned.pth"), final, setup, "regrowth_oneshot_final",
                            {"val_acc": val_acc, "test_acc": test_acc}, allocation=best.allocation,
                            start_ckpt=sparse_path, start_sparsity=start_sparsity,
                            start_metrics={"val_acc": sparse_val, "test_acc": sparse_test},
                            finetune_epochs=ft_epochs, finetune_scope=args.finetune_scope,
                            search_layers=names, ssim=ssim)
    summary = {
        "model": args.m_name, "start_ckpt": sparse_path, "start_sparsity": start_sparsity,
        "final_sparsity": final_sparsity, "budget": budget, "regrown": best.regrown, "allocator": args.allocator,
        "sparse_val_acc": sparse_val, "sparse_test_acc": sparse_test,
        "best_episode": outcome.best_episode + 1, "best_reward": best.reward,
        "best_val_acc_after_mini_finetune": best.val_acc, "episodes": outcome.episodes,
        "stop_reason": outcome.stop_reason, "search_seconds": outcome.seconds,
        "mini_finetune_steps": steps, "final_finetune_epochs": ft_epochs, "final_val_acc": val_acc,
        "final_test_acc": test_acc, "best_allocation": best.allocation, "search_layers": names, "ssim": ssim,
        "run_seconds": time.perf_counter() - t_run,
    }
    write_json(os.path.join(out_dir, "summary.json"), summary)
    with open(os.path.join(out_dir, "search_summary.txt"), "w") as fh:
        fh.write(f"model: {args.m_name}\nstart checkpoint: {sparse_path}\n"
                 f"sparsity: {start_sparsity:.4f} -> {final_sparsity:.4f} (regrew {best.regrown:,} of budget {budget:,})\n"
                 f"sparse model val acc: {sparse_val:.2f}  test acc: {sparse_test:.2f}\n"
                 f"best episode: {outcome.best_episode + 1} of {outcome.episodes} ({outcome.stop_reason})\n"
                 f"best val acc after mini-finetune ({steps} steps): {best.val_acc:.2f}\n"
                 f"best reward (accuracy gain/100 + budget bonus): {best.reward:+.4f}\n"
                 f"final finetune: {ft_epochs:g} epochs, scope {args.finetune_scope}\n"
                 f"final val acc: {val_acc:.2f}  test acc: {test_acc:.2f}\n"
                 f"search time: {outcome.seconds:.0f} s ({outcome.seconds / 3600:.2f} h)\n"
                 f"best allocation: {best.allocation}\n")
    curves, alloc_png = write_search_outputs(out_dir, outcome.rows, names, best.allocation, caps, ssim,
                                             f"{args.m_name} one-shot regrowth ({args.allocator})")
    wandb.finish()
    log(f"final: sparsity {final_sparsity:.4f} | val {val_acc:.2f} | test {test_acc:.2f} "
        f"(sparse start: val {sparse_val:.2f}, test {sparse_test:.2f})")
    log(f"wrote {final_path}, {os.path.join(out_dir, 'search_summary.txt')}, episodes.jsonl, {curves}, {alloc_png}")
    return summary


if __name__ == "__main__":
    cli.run(main, get_args_parser())
