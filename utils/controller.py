"""The LSTM allocation controller and its REINFORCE training (the published `RegrowthAgent`).

One decision per search-space layer, in search order (ascending SSIM). At step p the LSTM cell sees
the previous step's raw logits and a context [position, capacity share, remaining-budget share]
and outputs logits over A ratio options r_j = j/A (j = 1..A; 0 is not an option). The layer gets
round(r_j * min(capacity, remaining)) weights; options that give a count already offered by an
earlier option are masked (each distinct count once), so once the budget is spent a step is
deterministic. The iterative variant first picks the step's budget from B fractions of all prunable
weights with a separate head.

REINFORCE: reward baseline b is an EMA (decay 0.9, initialised with the first reward), advantage
(r - b)/τ clipped to ±clip, where τ is `reward_temperature` (one-shot) or the std of the recent
reward window (iterative, as published); loss = -adv · Σ log π(a) - β · H with β decaying linearly
from start_beta to end_beta over decay_fraction of the episodes; Adam with gradient clipping. A
batch of episodes (parallel evaluation) gives one update with the mean loss, each episode's
advantage computed in order, which reduces to the published update for a batch of one.
"""
import collections
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

INFEASIBLE = -1e9


class RegrowthAgent(nn.Module):
    """LSTMCell(max(A, B) + 3 -> hidden) with an allocation head (A) and an optional budget head (B)."""

    def __init__(self, action_space_size=11, hidden_size=64, budget_space_size=0, context_dim=3):
        super().__init__()
        self.action_space_size, self.budget_space_size = int(action_space_size), int(budget_space_size)
        self.input_dim = max(self.action_space_size, self.budget_space_size)
        self.hidden_size, self.context_dim = int(hidden_size), int(context_dim)
        self.cell = nn.LSTMCell(self.input_dim + context_dim, hidden_size)
        self.alloc_head = nn.Linear(hidden_size, self.action_space_size)
        self.budget_head = nn.Linear(hidden_size, self.budget_space_size) if budget_space_size else None

    def initial_state(self):
        z = torch.zeros(1, self.hidden_size)
        return z, z.clone()

    def forward(self, prev_logits, context, state, head="alloc"):
        """One LSTM step: (logits (A or B,), new state). prev_logits is right-padded with zeros."""
        prev = F.pad(prev_logits, (0, self.input_dim - prev_logits.shape[-1]))
        x = torch.cat([prev, torch.as_tensor(context, dtype=torch.float32)]).unsqueeze(0)
        h, c = self.cell(x, state)
        out = (self.budget_head if head == "budget" else self.alloc_head)(h)
        return out.squeeze(0), (h, c)


@dataclass
class AllocationSample:
    """One sampled episode: the allocation and what REINFORCE needs to learn from it."""

    allocation: dict          # {layer: count} for counts > 0, in search order
    counts: list              # count per search layer (zeros included)
    budget: int
    log_prob: torch.Tensor    # Σ log π(a_t) over all decisions (keeps the graph)
    entropy: torch.Tensor     # mean entropy over all decisions (keeps the graph)
    actions: list
    budget_index: int = None
    budget_frac: float = None
    guard_used: bool = False


def ratio_counts(eff_max, action_space_size):
    """Candidate counts round(j/A * eff_max), j = 1..A (round half to even, as torch.round)."""
    ratios = torch.arange(1, action_space_size + 1, dtype=torch.float32) / action_space_size
    return torch.round(ratios * float(eff_max)).long()


def feasible_mask(counts, remaining):
    """Options whose count fits the remaining budget and is the first option giving that count."""
    seen, ok = set(), []
    for c in counts.tolist():
        ok.append(c <= remaining and c not in seen)
        seen.add(c)
    mask = torch.tensor(ok)
    if not mask.any():
        mask[0] = True
    return mask


def _sample(logits, generator, greedy=False):
    probs = torch.softmax(logits.detach(), -1)
    if greedy:
        return int(probs.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_allocation(agent, names, capacities, budget=None, budget_options=None, total_weights=None,
                      generator=None, position="oneshot", guard_layer=None, greedy=False, units=None,
                      top_up_order=None):
    """Run the controller over the search layers and sample an allocation.

    names: search layers in order; capacities: {layer: pruned count}. Either a fixed `budget` (one-shot)
    or `budget_options` (fractions of `total_weights`, iterative: the first decision picks one).
    position: "oneshot" -> p / max(N-1, 1); "iterative" -> (p+1)/(N+1) (the published contexts).
    guard_layer: iterative safeguard, the layer that gets 1 weight if everything rounds to 0.
    units: {layer: size} when a layer can only grow in whole units (a coupled filter group restores
    `size` filters per channel); counts are then multiples of the unit (capacities and budget in filters).
    top_up_order: layers to hand any budget left after the last decision to, in that order, up to their
    capacity (the published structured controller's greedy top-up; log-probs are left unchanged).
    """
    caps = [int(capacities[n]) for n in names]
    total_cap = sum(caps)
    n = len(names)
    state = agent.initial_state()
    log_probs, entropies, actions = [], [], []
    budget_index = budget_frac = None
    prev = torch.zeros(agent.action_space_size)
    if budget_options is not None:
        if len(budget_options) != agent.budget_space_size:
            raise ValueError(f"{len(budget_options)} budget options for a budget head of {agent.budget_space_size}")
        prev = torch.zeros(agent.budget_space_size)
        logits, state = agent(prev, [0.0, 0.0, 1.0], state, head="budget")
        budget_index = _sample(logits, generator, greedy)
        logp = torch.log_softmax(logits, -1)
        log_probs.append(logp[budget_index])
        entropies.append(-(logp.exp() * logp).sum())
        budget_frac = float(budget_options[budget_index])
        budget = max(1, min(int(total_weights * budget_frac), total_cap))
        prev = logits
    budget = int(min(budget, total_cap))
    remaining = budget
    counts = []
    for p, cap in enumerate(caps):
        pos = p / max(n - 1, 1) if position == "oneshot" else (p + 1) / (n + 1)
        context = [pos, cap / max(total_cap, 1), remaining / budget if budget > 0 else 0.0]
        logits, state = agent(prev, context, state)
        unit = int(units.get(names[p], 1)) if units else 1
        options = ratio_counts(min(cap, remaining) // unit, agent.action_space_size) * unit
        masked = torch.where(feasible_mask(options, remaining), logits, torch.full_like(logits, INFEASIBLE))
        a = _sample(masked, generator, greedy)
        logp = torch.log_softmax(masked, -1)
        log_probs.append(logp[a])
        entropies.append(-(logp.exp() * logp).sum())
        chosen = int(min(int(options[a]), cap, remaining))
        remaining = max(remaining - chosen, 0)
        counts.append(chosen)
        actions.append(a)
        prev = logits
    for name in top_up_order or []:
        if remaining <= 0:
            break
        i, unit = names.index(name), (int(units.get(name, 1)) if units else 1)
        add = min(caps[i] - counts[i], remaining) // unit * unit
        counts[i] += add
        remaining -= add
    guard_used = False
    if sum(counts) == 0 and guard_layer is not None and guard_layer in names and capacities[guard_layer] > 0:
        unit = int(units.get(guard_layer, 1)) if units else 1
        counts[names.index(guard_layer)] = unit  # published safeguard; log-probs are left unchanged
        guard_used = True
    allocation = {nm: c for nm, c in zip(names, counts) if c > 0}
    return AllocationSample(allocation, counts, budget, torch.stack(log_probs).sum(), torch.stack(entropies).mean(),
                            actions, budget_index, budget_frac, guard_used)


@dataclass
class ReinforceConfig:
    learning_rate: float = 3e-4
    baseline_decay: float = 0.9
    advantage: str = "temperature"      # "temperature" (one-shot) or "window_std" (iterative)
    reward_temperature: float = 0.005
    advantage_clip: float = 100.0
    start_beta: float = 0.40
    end_beta: float = 0.04
    decay_fraction: float = 0.4
    num_episodes: int = 400
    grad_clip: float = 1.0
    early_stop_patience: int = 50
    min_episodes: int = 50
    reward_std_threshold: float = 0.002
    reward_window_size: int = 20


class Reinforce:
    """Policy-gradient bookkeeping: baseline, advantages, entropy schedule, updates and stopping."""

    def __init__(self, agent, config):
        self.agent, self.cfg = agent, config
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate)
        self.baseline = None
        self.window = collections.deque(maxlen=config.reward_window_size)
        self.best_reward, self.best_episode = -math.inf, -1

    def beta(self, episode):
        span = self.cfg.num_episodes * self.cfg.decay_fraction
        if episode < span:
            return self.cfg.start_beta - (self.cfg.start_beta - self.cfg.end_beta) * episode / span
        return self.cfg.end_beta

    def window_std(self):
        if len(self.window) < 2:
            return math.inf
        m = sum(self.window) / len(self.window)
        return math.sqrt(sum((r - m) ** 2 for r in self.window) / len(self.window))

    def advantage(self, reward):
        """Advantage of one reward against the EMA baseline; updates the baseline afterwards."""
        if self.baseline is None:
            self.baseline = reward
        if self.cfg.advantage == "window_std":
            scale = self.window_std() if len(self.window) >= 2 else 1.0
        else:
            scale = self.cfg.reward_temperature
        adv = (reward - self.baseline) / max(scale, 1e-6)
        adv = max(-self.cfg.advantage_clip, min(self.cfg.advantage_clip, adv))
        self.baseline = self.cfg.baseline_decay * self.baseline + (1 - self.cfg.baseline_decay) * reward
        return adv

    def update(self, samples, rewards, episode):
        """One Adam step from a batch of (sample, reward); episode = index of the batch's first episode."""
        beta = self.beta(episode)
        advs, terms, ents = [], [], []
        for i, (s, r) in enumerate(zip(samples, rewards)):
            adv = self.advantage(r)
            self.window.append(r)
            if r > self.best_reward:
                self.best_reward, self.best_episode = r, episode + i
            advs.append(adv)
            terms.append(-adv * s.log_prob)
            ents.append(s.entropy)
        entropy = torch.stack(ents).mean()
        loss = torch.stack(terms).mean() - beta * entropy
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.agent.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return {"loss": loss.detach().item(), "entropy": entropy.detach().item(), "beta": beta, "advantages": advs,
                "baseline": self.baseline}

    def stop_reason(self, episode):
        """Why to stop after `episode` (0-based), or None."""
        if episode - self.best_episode >= self.cfg.early_stop_patience:
            return f"no better reward for {self.cfg.early_stop_patience} episodes"
        if (episode >= self.cfg.min_episodes and len(self.window) == self.window.maxlen
                and self.window_std() < self.cfg.reward_std_threshold):
            return f"reward std over the last {len(self.window)} episodes below {self.cfg.reward_std_threshold}"
        return None

    def state_dict(self):
        return {"agent": self.agent.state_dict(), "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline, "window": list(self.window), "best_reward": self.best_reward,
                "best_episode": self.best_episode, "config": asdict(self.cfg)}

    def load_state_dict(self, state):
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.window = collections.deque(state["window"], maxlen=self.cfg.reward_window_size)
        self.best_reward, self.best_episode = state["best_reward"], state["best_episode"]
