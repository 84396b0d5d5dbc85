"""The regrowth environment: one allocation in, one reward out (an episode).

`RegrowthEnv` loads the sparse starting state into one preallocated working model (no deep copies),
regrows the allocation by saliency, has a reward proxy score the regrown model (utils/regrowth/proxies.py)
and computes the reward (formulas in utils/regrowth/search.py). Its random init draws come from (seed, episode).
"""
import math
import time
from dataclasses import dataclass, field

import torch

from utils.compute import pass_flops
from utils.errors import BridgeError
from utils.regrowth.proxies import RewardProxy
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
