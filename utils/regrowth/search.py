"""The regrowth search: evaluate allocations (episodes) and learn which one to keep.

`RegrowthEnv` (utils/regrowth/env.py) turns an allocation into a reward: it loads the sparse starting state into one
preallocated working model (no deep copies), regrows by saliency, has a reward proxy score the regrown
model (utils/regrowth/proxies.py: the published mini-finetune `steps`, BatchNorm re-estimation `bn`, or
the training-free `saliency` share) and rewards

    acc metric:       reward = (proxy val acc - reference acc) / 100 + budget_bonus * usage
    loss metric:      reward = (reference loss - proxy val loss)  + budget_bonus * usage
    saliency / gradient proxy: reward = restored share           + budget_bonus * usage

where the reference acc is the sparse model's val accuracy (one-shot) or the pruning curve interpolated
at the new sparsity (iterative), the reference loss the start model's loss on the reward validation
images, and usage = regrown / budget.

`run_search` drives the episodes for any allocator: the RL controller (REINFORCE updates, early
stopping), `random` (random search over the same number of episodes) or a deterministic allocator
(one episode). It logs one JSON row per episode, keeps the best episode's states, and writes a
resumable state file after every episode so `--resume` continues exactly where a run stopped
(`SearchFiles`, `SearchProgress`; the batch's episodes spread over processes by `evaluate_batch`).
Every episode uses the same mini-finetune data order and seeds (so rewards differ by allocation,
not by luck of the batch order), and its random init draws come from (seed, episode).
"""
import math
import os
import time
from dataclasses import dataclass, field

import torch

from utils import distributed as dist
from utils.allocators import allocate
from utils.checkpoints import FORMAT, atomic_torch_save, load_state_file
from utils.controller import sample_allocation
from utils.errors import BridgeError
from utils.progress import bar, log
from utils.records import append_jsonl, read_jsonl, write_jsonl
from utils.regrowth.env import EpisodeResult, cpu_clone
from utils.runtime import rng_state, set_rng_state


@dataclass
class SearchConfig:
    allocator: str = "rl"
    num_episodes: int = 400
    budget: int = None                 # one-shot: fixed budget
    budget_options: list = None        # iterative: fractions of total_weights
    position: str = "oneshot"          # controller position context
    guard_layer: str = None
    seed: int = 42
    units: dict = None                 # structured: filters per channel of each group
    episodes_per_update: int = 1       # episodes sampled from one policy before each update
    top_up_order: list = None          # where budget the controller left goes (structured; --fill_budget)


@dataclass
class SearchOutcome:
    best: EpisodeResult
    best_episode: int
    episodes: int
    stop_reason: str
    seconds: float
    rows: list

    def best_row(self):
        """The log row of the best episode ({} if the log does not hold it)."""
        return next((r for r in self.rows if r["episode"] == self.best_episode + 1), {})


def _row(episode, sample_info, result, update, index_in_batch=0):
    row = {"episode": episode + 1, "reward": result.reward, "val_acc": result.val_acc,
           "reference_acc": result.reference_acc, "improvement_pp": result.val_acc - result.reference_acc,
           "sparsity": result.sparsity, "regrown": result.regrown, "usage": result.usage,
           "allocation": result.allocation, **sample_info, **result.timings}
    row["flops"] = result.flops
    for key in ("val_loss", "reference_loss", "restored_share"):
        if not math.isnan(getattr(result, key)):
            row[key] = getattr(result, key)
    if update:
        row.update({k: update[k] for k in ("loss", "entropy", "beta")})
        row["advantage"] = update["advantages"][index_in_batch]
    return row


def _sample_one(env, names, ssim, capacities, cfg, reinforce, policy_gen):
    """(allocation, budget, controller sample or None, log info) for one episode."""
    if cfg.allocator == "rl":
        sample = sample_allocation(reinforce.agent, names, capacities, budget=cfg.budget,
                                   budget_options=cfg.budget_options, total_weights=env.total_weights,
                                   generator=policy_gen, position=cfg.position, guard_layer=cfg.guard_layer,
                                   units=cfg.units, top_up_order=cfg.top_up_order)
        return sample.allocation, sample.budget, sample, {"budget": sample.budget, "budget_frac": sample.budget_frac,
                                                          "actions": sample.actions}
    if cfg.budget_options is not None:  # iterative non-RL: the largest budget option
        budget = max(1, min(int(env.total_weights * max(cfg.budget_options)), sum(capacities.values())))
    else:
        budget = cfg.budget
    allocation = allocate(cfg.allocator, names, ssim, capacities, budget, policy_gen, cfg.units)
    return allocation, budget, None, {"budget": budget}


def _measured(result):
    """What the episode's proxy measured, for the log line."""
    if not math.isnan(result.restored_share):
        return f"restored share {result.restored_share:.4f}"
    text = (f"val {result.val_acc:.2f} vs ref {result.reference_acc:.2f} "
            f"({result.val_acc - result.reference_acc:+.2f} pp)")
    if not math.isnan(result.reference_loss):
        text += f", loss {result.val_loss:.4f} vs {result.reference_loss:.4f}"
    return text


@dataclass
class SearchFiles:
    """What a search writes in its folder: the resume state, the best episode's states, the episode log."""
    state: str
    best_states: str
    log: str

    @classmethod
    def in_folder(cls, out_dir):
        return cls(os.path.join(out_dir, "search_state.pth"), os.path.join(out_dir, "search_best_states.pth"),
                   os.path.join(out_dir, "episodes.jsonl"))


@dataclass
class SearchProgress:
    """Where a search stands: what --resume restores."""
    next_episode: int = 0
    best: EpisodeResult = None
    best_episode: int = -1
    best_owner: int = 0          # the process holding the best episode's states (torchrun)
    rows: list = field(default_factory=list)
    elapsed: float = 0.0         # seconds spent before this process started


def restore_progress(files, cfg, names, policy_gen, reinforce, tag):
    """The progress saved in `files` (policy generator, controller and RNG states restored in place)."""
    st = load_state_file(files.state)
    if st.get("allocator") != cfg.allocator or st.get("names") != list(names):
        raise BridgeError(f"{files.state} belongs to a different search (allocator or search layers differ); "
                          "remove it or drop --resume")
    progress = SearchProgress(st["next_episode"], None, st["best_episode"], 0, [], st["elapsed"])
    policy_gen.set_state(st["policy_generator"])
    if reinforce is not None:
        reinforce.load_state_dict(st["reinforce"])
    if st.get("best") is not None:
        progress.best = EpisodeResult(**st["best"])
        stored = load_state_file(files.best_states) if os.path.isfile(files.best_states) else {}
        if stored.get("episode") == progress.best_episode:  # else ensure_best_states() rebuilds them
            progress.best.pre_state, progress.best.post_state = stored["pre_state"], stored["post_state"]
    progress.rows = [r for r in read_jsonl(files.log) if r["episode"] <= progress.next_episode]
    if dist.is_main():
        write_jsonl(files.log, progress.rows)
    set_rng_state(st["rng"])
    best = progress.best
    log(f"[{tag}] resumed at episode {progress.next_episode + 1} "
        f"(best reward {best.reward if best else float('nan'):+.4f})")
    return progress


def save_progress(files, cfg, names, progress, policy_gen, reinforce, seconds):
    best = progress.best
    best_dict = {k: getattr(best, k) for k in best.__dataclass_fields__ if not k.endswith("_state")}
    atomic_torch_save({"format": FORMAT, "stage": "search_state", "allocator": cfg.allocator,
                       "names": list(names), "next_episode": progress.next_episode,
                       "best_episode": progress.best_episode, "best": best_dict,
                       "policy_generator": policy_gen.get_state(),
                       "reinforce": reinforce.state_dict() if reinforce else None, "rng": rng_state(),
                       "elapsed": seconds}, files.state)


def evaluate_batch(env, drawn, batch):
    """The batch's episodes spread over the processes (one each in turn); every process learns every result,
    the states stay with the process that made them. Returns (results, owner process per result)."""
    mine = {}
    for i, ep in enumerate(batch):
        if i % dist.world_size() == dist.rank():
            mine[ep] = env.evaluate(drawn[i][0], drawn[i][1], ep)
    shared = {}
    for owner, part in enumerate(dist.all_gather_object(
            {ep: {k: v for k, v in vars(r).items() if not k.endswith("_state")} for ep, r in mine.items()})):
        for ep, fields in part.items():
            shared[ep] = (owner, EpisodeResult(**fields))
    return [mine.get(ep, shared[ep][1]) for ep in batch], [shared[ep][0] for ep in batch]


def keep_if_best(env, progress, ep, result, owner, files, on_best):
    """Make `result` the best so far if its reward is higher: its states rebuilt here if another process made
    them, written to the best-states file, on_best called (main process)."""
    if not (progress.best is None or result.reward > progress.best.reward):
        return
    progress.best, progress.best_episode, progress.best_owner = result, ep, owner
    if not dist.is_main():
        return
    if result.pre_state is None and env.keep_states:  # made elsewhere: rebuild exactly
        env.regrow(result.allocation, ep)
        result.pre_state = cpu_clone(env.model.state_dict())
    if files and env.keep_states:
        atomic_torch_save({"episode": ep, "pre_state": result.pre_state, "post_state": result.post_state},
                          files.best_states)
    if on_best:
        on_best(ep, result)


def run_search(env, names, ssim, capacities, cfg, reinforce=None, out_dir=None, resume=False, on_best=None,
               on_episode=None, tag="search"):
    """Run the episodes (see module docstring). Returns a SearchOutcome.

    Episodes come in batches of cfg.episodes_per_update: the batch's allocations are sampled from the
    same policy, evaluated (spread over the processes under torchrun: every process holds the same
    controller and generator, so all sample the same allocations), and the policy is updated once
    from the whole batch. A batch of one is the published one-update-per-episode loop.
    on_best(episode, result): called on the main process when an episode sets a new best reward.
    on_episode(episode, result): called on the main process after every episode.
    """
    main = dist.is_main()
    files = SearchFiles.in_folder(out_dir) if out_dir else None
    policy_gen = torch.Generator().manual_seed(cfg.seed)
    deterministic = cfg.allocator not in ("rl", "random")
    num_episodes = 1 if deterministic else cfg.num_episodes
    per_update = max(1, int(cfg.episodes_per_update))
    if resume and files and os.path.isfile(files.state):
        progress = restore_progress(files, cfg, names, policy_gen, reinforce, tag)
    elif resume and files:
        raise BridgeError(f"--resume: nothing to resume, {files.state} does not exist")
    else:
        progress = SearchProgress()
        if main and files and os.path.isfile(files.log):
            os.remove(files.log)  # a fresh search starts a fresh log
    dist.barrier()

    t_start = time.perf_counter()
    stop_reason = "episode limit reached"
    episodes_bar = bar(total=num_episodes, initial=progress.next_episode, desc=tag, unit="episode",
               **({} if main else {"disable": True}))
    e = progress.next_episode
    while e < num_episodes:
        batch = list(range(e, min(e + per_update, num_episodes)))
        drawn = [_sample_one(env, names, ssim, capacities, cfg, reinforce, policy_gen) for _ in batch]
        results, owners = evaluate_batch(env, drawn, batch)
        update = (reinforce.update([d[2] for d in drawn], [r.reward for r in results], e)
                  if cfg.allocator == "rl" else None)
        for i, (ep, result) in enumerate(zip(batch, results)):
            keep_if_best(env, progress, ep, result, owners[i], files, on_best)
            if main and on_episode:
                on_episode(ep, result)
            best = progress.best
            row = _row(ep, drawn[i][3], result, update, i)
            row["best_reward"] = best.reward
            progress.rows.append(row)
            if main and files:
                append_jsonl(files.log, row)
            log(f"[{tag}] ep {ep + 1}/{num_episodes} | {_measured(result)} | used {result.regrown}/{drawn[i][1]} | "
                f"reward {result.reward:+.4f} | best {best.reward:+.4f} (ep {progress.best_episode + 1})"
                + (f" | H {update['entropy']:.3f} β {update['beta']:.3f}" if update else "")
                + f" | {result.timings['episode_s']:.1f} s")
        e = progress.next_episode = batch[-1] + 1
        episodes_bar.update(len(batch))
        if main and files:
            save_progress(files, cfg, names, progress, policy_gen, reinforce,
                          progress.elapsed + time.perf_counter() - t_start)
        if reinforce is not None:
            reason = reinforce.stop_reason(e - 1)
            if reason:
                stop_reason = reason
                break
    episodes_bar.close()
    best = progress.best
    if best is None:
        raise BridgeError("the search ran no episode")
    if dist.is_distributed():  # every process continues from the best episode's states
        best.pre_state, best.post_state = dist.broadcast_object((best.pre_state, best.post_state),
                                                                src=progress.best_owner)
    return SearchOutcome(best, progress.best_episode, e, stop_reason, progress.elapsed + time.perf_counter() - t_start,
                         progress.rows)


def ensure_best_states(env, outcome, budget=None):
    """Rebuild the best episode's states if a resumed search could not load them (deterministic rerun)."""
    best = outcome.best
    if best.pre_state is None or best.post_state is None:
        again = env.evaluate(best.allocation, budget or max(best.regrown, 1), outcome.best_episode)
        best.pre_state, best.post_state = again.pre_state, again.post_state
    return best


def search_flops(rows):
    """Training FLOPs a search's episodes spent (their log rows; resumed episodes included)."""
    return float(sum(r.get("flops", 0.0) for r in rows))
