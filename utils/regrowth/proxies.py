"""How an episode scores the model an allocation regrew: the reward proxies behind --reward_proxy.

    steps     the published mini-finetune: `steps` AdamW steps from the regrown state (constant or cosine
              lr; `repeats` data orders, mean of their results), best validation state kept, then its
              accuracy / loss on the reward validation subset. Cost: the steps + one evaluation per repeat.
    bn        no weight update: the BatchNorm running statistics are re-estimated on `batches` fixed
              training batches (cumulative average, only BatchNorm layers in train mode), then one
              evaluation. Regrown weights shift every later layer's activations; a model scored with the
              start's stale statistics measures that mismatch more than the allocation. Cost: `batches`
              forward passes + one evaluation.
    saliency  training-free: the share of the search space's total saliency (dL/dθ)²·θ² (filter scores
              for structured regrowth) that the allocation restores, the loss change the regrowth
              criterion itself predicts for those positions (OBD / SNIP-style). Cost: none per episode.
    gradient  training-free: the share of the sparse start model's gradient magnitude |dL/dθ| at pruned
              positions (over the saliency batches) that the allocation frees: RigL's growth criterion,
              how fast the freed weights can lower the loss once they train, measured once per search
              (unstructured only). Cost: none per episode.

The metric (`acc` or `loss`) says which number of the evaluation the reward uses; `saliency` and `gradient`
score a restored share. Rewards (utils/regrowth/env.py RegrowthEnv): acc (val acc - reference acc) / 100,
loss reference loss - val loss, share the restored share; each + budget_bonus * usage. bench/proxy_fidelity.py measures how
well each proxy ranks allocations against long finetunes (README "Speed").
"""
import math
import time
from dataclasses import dataclass, field

import torch

from data.data_loader import set_shuffle_seed
from utils.compute import images_in_batches
from utils.errors import BridgeError, UnknownChoiceError
from utils.runtime import set_seed
from utils.training import adamw_finetune_optimizer, clone_state, evaluate, finetune

REWARD_PROXIES = ("steps", "bn", "saliency", "gradient")
REWARD_METRICS = ("acc", "loss")
LR_SCHEDULES = ("constant", "cosine")  # mini-finetune learning rate: published constant, or annealed to 0


@dataclass
class ProxyScore:
    """What a proxy measured for one regrown model (nan where it measures nothing of the kind)."""

    val_acc: float = math.nan
    val_loss: float = math.nan
    restored_share: float = math.nan
    timings: dict = field(default_factory=dict)
    train_images: int = 0    # images through forward + backward (utils.compute counts them)
    forward_images: int = 0  # images through a forward only (BatchNorm passes, the scoring evaluations)


class RewardProxy:
    """Base: score(env, regrown, episode) leaves the scored state in env.model and returns a ProxyScore."""

    name = ""
    metric = "acc"

    def describe(self):
        return self.name

    def score(self, env, regrown, episode):
        raise NotImplementedError


class MiniFinetuneProxy(RewardProxy):
    """`steps`: the published per-episode finetune (see the module docstring)."""

    name = "steps"

    def __init__(self, steps, schedule="constant", repeats=1, metric="acc", lr=3e-4, weight_decay=0.01):
        if int(repeats) < 1:
            raise BridgeError(f"reward repeats must be at least 1, got {repeats}")
        if schedule not in LR_SCHEDULES:
            raise UnknownChoiceError("mini-finetune lr schedule", schedule, LR_SCHEDULES)
        self.steps, self.schedule, self.repeats = int(steps), schedule, int(repeats)
        self.metric, self.lr, self.weight_decay = check_metric(metric), lr, weight_decay

    def describe(self):
        return (f"mini-finetune {self.steps} steps ({self.schedule} lr)"
                + (f" x {self.repeats} data orders" if self.repeats > 1 else ""))

    def _run(self, env, seed, episode):
        set_seed(seed)  # same dropout / data order in every episode of this environment
        set_shuffle_seed(env.train_loader, seed)
        opt = adamw_finetune_optimizer(env.model, self.lr, self.weight_decay)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.steps, 1))
                 if self.schedule == "cosine" else None)  # stepped once per optimizer step
        return finetune(env.model, env.train_loader, env.val_loader, opt, env.device, env.precision,
                        steps=self.steps, scheduler=sched, verbose=False, desc=f"episode {episode + 1}")

    def score(self, env, regrown, episode):
        """`repeats` mini-finetunes from the regrown state (seeds env.seed, env.seed + 1, ...); env.model
        ends as the first run's best state."""
        regrown_state = clone_state(env.model) if self.repeats > 1 else None
        accs, losses, first, train_s, data_s = [], [], None, 0.0, 0.0
        trained, scored = 0, 0
        t0 = time.perf_counter()
        for k in range(self.repeats):
            if k:
                env.model.load_state_dict(regrown_state)
            res = self._run(env, env.seed + k, episode)
            accs.append(res.best_val_acc)
            losses.append(res.best_val_loss)
            trained += res.images
            scored += len(res.history) * images_in_batches(env.val_loader)
            train_s += sum(h["seconds"] for h in res.history)
            data_s += sum(h["data_seconds"] for h in res.history)
            if k == 0 and self.repeats > 1:
                first = clone_state(env.model)
        if first is not None:
            env.model.load_state_dict(first)
        total = time.perf_counter() - t0
        return ProxyScore(sum(accs) / len(accs), sum(losses) / len(losses), timings={
            "finetune_train_s": train_s - data_s, "finetune_data_s": data_s, "finetune_eval_s": total - train_s},
            train_images=trained, forward_images=scored)


@torch.no_grad()
def recalibrate_batchnorm(model, loader, batches, device, precision):
    """Re-estimate every BatchNorm's running statistics on the first `batches` batches of `loader`.

    Cumulative average (momentum None) from reset statistics; only BatchNorm layers run in train mode
    (dropout and the rest stay in eval); no parameter changes. Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    for x, _ in loader:
        if used >= batches:
            break
        x = x.to(device, non_blocking=True)
        if precision.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            model(x)
        used += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return used


class BatchNormProxy(RewardProxy):
    """`bn`: BatchNorm statistics re-estimated on `batches` fixed training batches, then one evaluation."""

    name = "bn"

    def __init__(self, batches=8, metric="acc"):
        if int(batches) < 1:
            raise BridgeError(f"--bn_batches must be at least 1, got {batches}")
        self.batches, self.metric = int(batches), check_metric(metric)

    def describe(self):
        return f"BatchNorm re-estimated on {self.batches} training batches, {self.metric} scored"

    def score(self, env, regrown, episode):
        t0 = time.perf_counter()
        set_shuffle_seed(env.train_loader, env.seed)  # the same batches in every episode
        if hasattr(env.train_loader, "set_epoch"):
            env.train_loader.set_epoch(0)
        used = recalibrate_batchnorm(env.model, env.train_loader, self.batches, env.device, env.precision)
        t1 = time.perf_counter()
        acc, loss = evaluate(env.model, env.val_loader, env.device, env.precision)
        return ProxyScore(acc, loss, timings={"bn_s": t1 - t0, "eval_s": time.perf_counter() - t1},
                          forward_images=images_in_batches(env.train_loader, used) + images_in_batches(env.val_loader))


class SaliencyProxy(RewardProxy):
    """`saliency`: the share of the search space's saliency the allocation restores (no pass at all)."""

    name = "saliency"
    metric = "share"

    def describe(self):
        return "restored share of the search space's saliency (training-free)"

    def score(self, env, regrown, episode):
        restored, total = env.regrower.restored_saliency(regrown)
        return ProxyScore(restored_share=restored / total if total > 0 else 0.0)


class GradientProxy(RewardProxy):
    """`gradient`: the share of the start model's |dL/dθ| at pruned positions the allocation frees."""

    name = "gradient"
    metric = "share"

    def __init__(self, scores):
        """scores: {layer: |dL/dθ| shaped like its weight, 0 where the start model's weight is alive}."""
        self.scores = {n: s.reshape(-1).double() for n, s in scores.items()}
        self.total = sum(float(s.sum()) for s in self.scores.values())

    def describe(self):
        return "freed share of the start model's gradient magnitude at pruned positions (training-free)"

    def score(self, env, regrown, episode):
        restored = sum(float(self.scores[n][i.cpu()].sum()) for n, i in regrown.items())
        return ProxyScore(restored_share=restored / self.total if self.total > 0 else 0.0)


def check_metric(metric):
    if metric not in REWARD_METRICS:
        raise UnknownChoiceError("reward metric", metric, REWARD_METRICS)
    return metric


def make_reward_proxy(name, *, metric="acc", steps=None, schedule="constant", repeats=1, bn_batches=8,
                      gradient=None):
    """The proxy called `name` (REWARD_PROXIES) with its settings; the others are ignored.
    gradient: a callable returning the gradient proxy's scores (computed only when that proxy is asked for)."""
    if name == "steps":
        if steps is None:
            raise BridgeError("the steps proxy needs a number of mini-finetune steps")
        return MiniFinetuneProxy(steps, schedule, repeats, metric)
    if name == "bn":
        return BatchNormProxy(bn_batches, metric)
    if name == "saliency":
        return SaliencyProxy()
    if name == "gradient":
        if gradient is None:
            raise BridgeError("the gradient proxy is available for unstructured (weight) regrowth only")
        return GradientProxy(gradient())
    raise UnknownChoiceError("reward proxy", name, REWARD_PROXIES)
