"""The regrowth search: evaluate allocations (episodes) and learn which one to keep.

`RegrowthEnv` turns an allocation into a reward: it loads the sparse starting state into one
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
resumable state file after every episode so `--resume` continues exactly where a run stopped.
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
from utils.compute import pass_flops
from utils.controller import sample_allocation
from utils.errors import BridgeError
from utils.progress import bar, log
from utils.records import append_jsonl, read_jsonl, write_jsonl
from utils.regrowth.proxies import RewardProxy
from utils.runtime import rng_state, set_rng_state
from utils.training import evaluate


@dataclass
class EpisodeResult:
    reward: float
    val_acc: float
    reference_acc: float
    sparsity: float
    regrown: int
    usage: float
    allocation: dict
    timings: dict = field(default_factory=dict)
    pre_state: dict = None    # regrown, before the mini-finetune (CPU)
    post_state: dict = None   # after the proxy: the mini-finetune's best validation epoch (CPU)
    val_loss: float = math.nan        # the proxy's validation loss (nan where it measures none)
    reference_loss: float = math.nan  # the loss metric's reference
    restored_share: float = math.nan  # the saliency / gradient proxies' score
    flops: float = 0.0                # training FLOPs the proxy spent on this episode (utils.compute)


def cpu_clone(state):
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def init_generator(seed, episode):
    """Generator for the random init draws of one episode (kaiming / xavier)."""
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(episode))


class RegrowthEnv:
    """Scores allocations on a preallocated working model (see module docstring)."""

    def __init__(self, work_model, start_state, regrower, train_loader, val_loader, device, precision, proxy,
                 reference_fn, budget_bonus, total_weights, seed, keep_states=True, macs=None):
        if not isinstance(proxy, RewardProxy):
            raise BridgeError(f"a RegrowthEnv needs a reward proxy (utils/regrowth/proxies.py), got {proxy!r}")
        self.model, self.start_state, self.regrower = work_model, start_state, regrower
        self.train_loader, self.val_loader = train_loader, val_loader
        self.device, self.precision, self.proxy = device, precision, proxy
        self.reference_fn, self.budget_bonus = reference_fn, budget_bonus
        self.total_weights, self.seed, self.keep_states = total_weights, seed, keep_states
        self.macs = macs  # utils.compute.MacCounter: what an episode's passes cost (None: not counted)
        self._reference_loss = None

    def reset(self):
        self.model.load_state_dict(self.start_state)

    def regrow(self, allocation, episode):
        """Start state + regrowth of `allocation` in the working model; returns ({unit: indices}, count)."""
        self.reset()
        return self.regrower.apply(self.model, allocation, init_generator(self.seed, episode))

    def reference_loss(self):
        """The loss metric's reference: the start model's loss on the reward validation images (once)."""
        if self._reference_loss is None:
            self.reset()
            self._reference_loss = evaluate(self.model, self.val_loader, self.device, self.precision)[1]
        return self._reference_loss

    def evaluate(self, allocation, budget, episode):
        """Regrow `allocation`, let the proxy score it and compute the reward. pre_state is the regrown
        model, post_state what the proxy left (the first mini-finetune's best state; for bn the regrown
        weights with re-estimated BatchNorm statistics)."""
        ref_loss = self.reference_loss() if self.proxy.metric == "loss" else math.nan
        t0 = time.perf_counter()
        idx, regrown = self.regrow(allocation, episode)
        pre = cpu_clone(self.model.state_dict()) if self.keep_states else None
        t1 = time.perf_counter()
        score = self.proxy.score(self, idx, episode)
        post = cpu_clone(self.model.state_dict()) if self.keep_states else None
        sparsity = self.regrower.sparsity(self.model)
        flops = 0.0
        if self.macs is not None and (score.train_images or score.forward_images):
            macs = self.macs(self.model)  # the regrown model's mask: what its passes multiply
            flops = pass_flops(macs, score.train_images, True) + pass_flops(macs, score.forward_images, False)
        ref = self.reference_fn(sparsity)
        usage = regrown / max(budget, 1)
        if self.proxy.metric == "acc":
            gain = (score.val_acc - ref) / 100.0
        elif self.proxy.metric == "loss":
            gain = ref_loss - score.val_loss
        else:
            gain = score.restored_share
        reward = gain + self.budget_bonus * usage
        timings = {"regrow_s": t1 - t0, **score.timings, "proxy_s": time.perf_counter() - t1,
                   "episode_s": time.perf_counter() - t0}
        return EpisodeResult(reward, score.val_acc, ref, sparsity, regrown, usage, dict(allocation), timings, pre, post,
                             val_loss=score.val_loss, reference_loss=ref_loss, restored_share=score.restored_share,
                             flops=flops)


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
    state_path = os.path.join(out_dir, "search_state.pth") if out_dir else None
    best_path = os.path.join(out_dir, "search_best_states.pth") if out_dir else None
    log_path = os.path.join(out_dir, "episodes.jsonl") if out_dir else None
    policy_gen = torch.Generator().manual_seed(cfg.seed)
    deterministic = cfg.allocator not in ("rl", "random")
    num_episodes = 1 if deterministic else cfg.num_episodes
    per_update = max(1, int(cfg.episodes_per_update))
    start, best, best_ep, best_owner, rows, elapsed = 0, None, -1, 0, [], 0.0
    if resume and state_path and os.path.isfile(state_path):
        st = load_state_file(state_path)
        if st.get("allocator") != cfg.allocator or st.get("names") != list(names):
            raise BridgeError(f"{state_path} belongs to a different search (allocator or search layers differ); "
                              "remove it or drop --resume")
        start, best_ep, elapsed = st["next_episode"], st["best_episode"], st["elapsed"]
        policy_gen.set_state(st["policy_generator"])
        if reinforce is not None:
            reinforce.load_state_dict(st["reinforce"])
        if st.get("best") is not None:
            best = EpisodeResult(**st["best"])
            stored = load_state_file(best_path) if os.path.isfile(best_path) else {}
            if stored.get("episode") == best_ep:  # else ensure_best_states() rebuilds them
                best.pre_state, best.post_state = stored["pre_state"], stored["post_state"]
        rows = [r for r in read_jsonl(log_path) if r["episode"] <= start]
        if main:
            write_jsonl(log_path, rows)
        set_rng_state(st["rng"])
        log(f"[{tag}] resumed at episode {start + 1} (best reward {best.reward if best else float('nan'):+.4f})")
    elif resume and state_path:
        raise BridgeError(f"--resume: nothing to resume, {state_path} does not exist")
    elif main and log_path and os.path.isfile(log_path):
        os.remove(log_path)  # a fresh search starts a fresh log
    dist.barrier()

    t_start = time.perf_counter()
    stop_reason = "episode limit reached"
    progress = bar(total=num_episodes, initial=start, desc=tag, unit="episode", **({} if main else {"disable": True}))
    e = start
    while e < num_episodes:
        batch = list(range(e, min(e + per_update, num_episodes)))
        drawn = [_sample_one(env, names, ssim, capacities, cfg, reinforce, policy_gen) for _ in batch]
        mine = {}
        for i, ep in enumerate(batch):
            if i % dist.world_size() == dist.rank():
                mine[ep] = env.evaluate(drawn[i][0], drawn[i][1], ep)
        # every process learns every result (states stay with the process that made them)
        shared = {}
        for owner, part in enumerate(dist.all_gather_object(
                {ep: {k: v for k, v in vars(r).items() if not k.endswith("_state")} for ep, r in mine.items()})):
            for ep, fields in part.items():
                shared[ep] = (owner, EpisodeResult(**fields))
        results = [mine.get(ep, shared[ep][1]) for ep in batch]
        update = (reinforce.update([d[2] for d in drawn], [r.reward for r in results], e)
                  if cfg.allocator == "rl" else None)
        for i, (ep, result) in enumerate(zip(batch, results)):
            if best is None or result.reward > best.reward:
                best, best_ep, best_owner = result, ep, shared[ep][0]
                if main and result.pre_state is None and env.keep_states:  # made elsewhere: rebuild exactly
                    env.regrow(result.allocation, ep)
                    result.pre_state = cpu_clone(env.model.state_dict())
                if main and best_path and env.keep_states:
                    atomic_torch_save({"episode": ep, "pre_state": result.pre_state, "post_state": result.post_state},
                                      best_path)
                if main and on_best:
                    on_best(ep, result)
            if main and on_episode:
                on_episode(ep, result)
            row = _row(ep, drawn[i][3], result, update, i)
            row["best_reward"] = best.reward
            rows.append(row)
            if main and log_path:
                append_jsonl(log_path, row)
            log(f"[{tag}] ep {ep + 1}/{num_episodes} | {_measured(result)} | used {result.regrown}/{drawn[i][1]} | "
                f"reward {result.reward:+.4f} | best {best.reward:+.4f} (ep {best_ep + 1})"
                + (f" | H {update['entropy']:.3f} β {update['beta']:.3f}" if update else "")
                + f" | {result.timings['episode_s']:.1f} s")
        e = batch[-1] + 1
        progress.update(len(batch))
        if main and state_path:
            best_dict = {k: getattr(best, k) for k in best.__dataclass_fields__ if not k.endswith("_state")}
            atomic_torch_save({"format": FORMAT, "stage": "search_state", "allocator": cfg.allocator,
                               "names": list(names), "next_episode": e, "best_episode": best_ep,
                               "best": best_dict, "policy_generator": policy_gen.get_state(),
                               "reinforce": reinforce.state_dict() if reinforce else None, "rng": rng_state(),
                               "elapsed": elapsed + time.perf_counter() - t_start}, state_path)
        if reinforce is not None:
            reason = reinforce.stop_reason(e - 1)
            if reason:
                stop_reason = reason
                break
    progress.close()
    if best is None:
        raise BridgeError("the search ran no episode")
    if dist.is_distributed():  # every process continues from the best episode's states
        best.pre_state, best.post_state = dist.broadcast_object((best.pre_state, best.post_state), src=best_owner)
    return SearchOutcome(best, best_ep, e, stop_reason, elapsed + time.perf_counter() - t_start, rows)


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
