"""One-shot regrowth, the stage behind regrowth_oneshot.py and regrowth_structure_oneshot.py:

    SSIM search space -> budget -> search (episodes: allocate, regrow, mini-finetune, reward)
    -> best allocation -> final finetune -> checkpoints, logs, summary, plots

What a unit of regrowth is (a layer's weights, or a channel group's filters) lives in utils/regrowth/kinds.py;
the scripts only set published defaults, the budget and the reward reference."""
import glob
import os
import time

from utils import cli
from utils.checkpoints import jsonable
from utils.errors import BridgeError
from utils.progress import log
from utils.records import WandbLog
from utils.regrowth.env import RegrowthEnv
from utils.regrowth.final_finetune import final_finetune, regrown_since, weight_masks
from utils.regrowth.outputs import save_model, write_oneshot_text, write_search_outputs, write_summary
from utils.regrowth.search import run_search, search_flops
from utils.regrowth.setup import (search_config, calibrated_reference, make_reinforce, prepare, reward_proxy,
                                  work_model_like)
from utils.stats import first_vs_last
from utils.training import clone_state, evaluate


def run_oneshot(hp, kind_cls, *, record, sparse_path, out_dir, requested, reference, script, shape,
                acc_baseline=None):
    """One regrowth step (see module docstring) configured by `hp` (RegrowthHparams).

    record: the arguments as printed and stored; requested(setup, kind) -> budget asked for;
    reference(setup, kind, sparse_val) -> fn(sparsity) giving the reward's reference accuracy;
    shape: the controller's PolicyShape; acc_baseline: episodes above this accuracy (a fraction) are saved.
    """
    cli.print_args(record, script)
    t_run = time.perf_counter()
    search, m_name, seed = hp.search, hp.source.m_name, hp.runtime.seed
    setup, sparse, _ = prepare(hp, sparse_path, record)
    cli.check_writable(out_dir)  # after the checkpoints load: a rejected run leaves no empty folder behind
    kind = kind_cls(setup)
    want = requested(setup, kind)
    space = kind.search_space(sparse, top_up_to=want if shape.top_up else None)
    capacity = sum(space.capacities.values())
    budget = min(want, capacity)
    log(f"total {kind.unit_label} {kind.total():,} | requested {want:,} | capacity of the search space "
        f"{capacity:,} | budget {budget:,}" + (f" (clamped to the capacity of {len(space.names)} unit(s))"
                                                if budget < want else ""))
    if budget <= 0:
        raise BridgeError(f"the search space has no pruned {kind.unit_label} to regrow")
    regrower = kind.regrower(space, sparse)
    sparse_val, _ = evaluate(sparse, setup.data.val, setup.device, setup.precision)
    sparse_test, _ = evaluate(sparse, setup.data.test, setup.device, setup.precision)
    start_sparsity = kind.sparsity(sparse)
    ref_fn = calibrated_reference(setup, sparse, reference(setup, kind, sparse_val), sparse_val)
    log(f"sparse start {sparse_path}: {kind.describe(sparse)}, val {sparse_val:.2f}, test {sparse_test:.2f}")

    steps = hp.reward.steps(len(setup.data.train))
    proxy = reward_proxy(hp.reward, steps, gradient=(lambda: kind.pruned_gradient(sparse, space.names))
                         if hasattr(kind, "pruned_gradient") else None)
    env = RegrowthEnv(work_model_like(setup, sparse.state_dict()), clone_state(sparse), regrower, setup.reward_train,
                      setup.reward_val, setup.device, setup.precision, proxy, ref_fn, search.budget_bonus, kind.total(),
                      seed, macs=setup.macs)
    reinforce = make_reinforce(hp, shape) if search.allocator == "rl" else None
    wandb = WandbLog(search.wandb, "bridge_" + kind.stage_prefix, f"{m_name}_{start_sparsity:.4f}", record)
    log(f"search: allocator {search.allocator}, up to {search.num_epochs} episodes; reward proxy per episode: "
        f"{proxy.describe()}" + (f" ({steps / len(setup.data.train):.2f} epochs)" if proxy.name == "steps" else ""))
    stage = f"{kind.stage_prefix}_oneshot"

    def on_best(e, result):
        for old in glob.glob(os.path.join(out_dir, "best_ep*_rwd*.pth")):
            os.remove(old)
        env.model.load_state_dict(result.pre_state)
        save_model(os.path.join(out_dir, f"best_ep{e + 1}_rwd{result.reward:+.4f}.pth"), env.model, setup,
                   f"{stage}_best_prefinetune", {"val_acc_after_mini_finetune": result.val_acc}, kind,
                   allocation=result.allocation, episode=e + 1, reward=result.reward, start_ckpt=sparse_path)

    def on_episode(e, result):
        wandb.log({"episode": e + 1, "reward": result.reward, "acc": result.val_acc, "usage": result.usage})
        if acc_baseline is not None and result.val_acc / 100 > acc_baseline:
            env.model.load_state_dict(result.pre_state)
            save_model(os.path.join(out_dir, f"baseline_exceeded_ep{e + 1}_acc{result.val_acc:.2f}.pth"), env.model,
                       setup, f"{stage}_baseline_exceeded", {"val_acc_after_mini_finetune": result.val_acc}, kind,
                       allocation=result.allocation, episode=e + 1)

    cfg = search_config(hp, space, seed, budget=budget, position=shape.position,
                        top_up=kind.top_up_order(space, sparse) if shape.top_up else None)
    outcome = run_search(env, space.names, space.ssim, space.capacities, cfg, reinforce, out_dir, search.resume,
                         on_best, on_episode, tag=f"oneshot {search.allocator}")
    setup.compute.add("search", search_flops(outcome.rows))
    best = outcome.best
    measured = (f"restored share {best.restored_share:.4f}" if proxy.metric == "share"
                else f"proxy val {best.val_acc:.2f} (reference {best.reference_acc:.2f})")
    log(f"search done: {outcome.episodes} episodes in {outcome.seconds:.0f} s ({outcome.stop_reason}); best episode "
        f"{outcome.best_episode + 1}: {measured}, reward {best.reward:+.4f}")
    learning = first_vs_last([r["reward"] for r in outcome.rows]) if search.allocator == "rl" else {}
    if learning.get("window", 0) >= 2:
        log(f"policy: mean reward of the last {learning['window']} episodes {learning['last_mean']:+.4f} ± "
            f"{learning['last_std']:.4f} vs the first {learning['window']}'s {learning['first_mean']:+.4f} ± "
            f"{learning['first_std']:.4f} (Welch t {learning['welch_t']:+.2f}, p = {learning['welch_p']:.3g})")

    # final finetune from the best allocation's regrown (pre-finetune) state, the one saved as best_ep*.pth;
    # a resumed search holds no states of the episodes before it, and regrowing with the best episode's init
    # seed rebuilds that state exactly
    if best.pre_state is not None:
        env.model.load_state_dict(best.pre_state)
    else:
        env.regrow(best.allocation, outcome.best_episode)
    final = env.model
    ft_epochs = hp.finetune.finetune_epochs or 0
    ft_steps = hp.finetune.steps(len(setup.data.train))
    val_acc, test_acc, _ = final_finetune(setup, final, regrown_since(weight_masks(sparse), final), ft_steps,
                                          evals_path=os.path.join(out_dir, "final_finetune_evals.jsonl"))
    final_sparsity = kind.sparsity(final)
    final_path = save_model(os.path.join(out_dir, "final_finetuned.pth"), final, setup, f"{stage}_final",
                            {"val_acc": val_acc, "test_acc": test_acc}, kind, allocation=best.allocation,
                            start_ckpt=sparse_path, start_sparsity=start_sparsity,
                            start_metrics={"val_acc": sparse_val, "test_acc": sparse_test},
                            finetune_epochs=ft_epochs, finetune_steps=ft_steps, finetune_scope=hp.finetune.finetune_scope,
                            search_units=space.names, ssim=space.ssim)
    summary = {
        "model": m_name, "kind": kind.unit_label, "start_ckpt": sparse_path, "start_sparsity": start_sparsity,
        "final_sparsity": final_sparsity, "budget": budget, "regrown": best.regrown, "allocator": search.allocator,
        "sparse_val_acc": sparse_val, "sparse_test_acc": sparse_test, "best_episode": outcome.best_episode + 1,
        "best_reward": best.reward, "best_val_acc_after_mini_finetune": best.val_acc,
        "reference_acc_of_best": best.reference_acc, "episodes": outcome.episodes, "stop_reason": outcome.stop_reason,
        "search_seconds": outcome.seconds, "reward_first_vs_last": learning,
        "mini_finetune_steps": steps, "reward_proxy": proxy.describe(),
        "final_finetune_epochs": ft_epochs, "final_finetune_steps": ft_steps,
        "final_finetune_schedule": hp.finetune.finetune_schedule, "selection": search.selection,
        "training_flops": setup.compute.record(),
        "final_val_acc": val_acc, "final_test_acc": test_acc, "best_allocation": best.allocation,
        "search_layers": space.names, "ssim": space.ssim, "run_seconds": time.perf_counter() - t_run,
        "final_description": kind.describe(final), "seed": seed, "args": jsonable(record),
    }
    write_summary(out_dir, summary)
    write_oneshot_text(out_dir, summary, measured, proxy.metric, hp.finetune.finetune_scope)
    curves, alloc_png = write_search_outputs(out_dir, outcome.rows, space, best.allocation,
                                             f"{m_name} one-shot {kind.unit_label} regrowth ({search.allocator})")
    wandb.finish()
    log(f"final: sparsity {final_sparsity:.4f} | val {val_acc:.2f} | test {test_acc:.2f} "
        f"(sparse start: val {sparse_val:.2f}, test {sparse_test:.2f})")
    log(f"wrote {final_path}, {os.path.join(out_dir, 'search_summary.txt')}, episodes.jsonl, {curves}, {alloc_png}")
    return summary


