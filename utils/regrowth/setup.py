"""What a regrowth run loads once (device, data, the dense and sparse models, the reward subsets, the compute
ledger) and the search pieces built from the flags: reward proxy, REINFORCE, search config."""
from dataclasses import dataclass

import torch

from models import model_loader
from utils import cli
from utils.cache import DiskCache, state_digest
from utils.checkpoints import load_state_into, model_from_checkpoint
from utils.compute import ComputeLedger, MacCounter
from utils.controller import Reinforce, RegrowthAgent
from utils.masks import count_pruned_params, masked_modules
from utils.progress import log
from utils.regrowth.hparams import RegrowthHparams
from utils.regrowth.proxies import make_reward_proxy
from utils.regrowth.search import SearchConfig
from utils.runtime import Precision, resolve_device, resolve_precision, set_seed, to_device
from utils.training import evaluate


@dataclass
class RegrowthSetup:
    """Everything loaded once per run."""

    hp: RegrowthHparams
    device: torch.device
    precision: Precision
    data: object
    dense: torch.nn.Module
    dense_path: str
    masked_names: list
    total_weights: int
    cache: object = None
    dense_digest: str = ""
    reward_train: object = None
    reward_val: object = None
    compute: ComputeLedger = None   # training FLOPs of this run, on top of the start checkpoint's
    macs: MacCounter = None         # non-zero MACs per image of a model of this architecture
    record: dict = None             # the run's arguments as printed, stored in its checkpoints

    def charge(self, stage, model, images, backward):
        """Count a pass of `images` images through `model` into the run's training FLOPs (utils.compute)."""
        if self.compute is not None and self.macs is not None:
            self.compute.add_pass(stage, self.macs(model), images, backward)

    def data_key(self):
        """What about the data changes a cached result."""
        d = self.hp.data
        return {"dataset": self.data.spec.name, "sizes": self.data.sizes, "val_split": d.val_split,
                "batch": d.batch_size, "eval_batch": d.eval_batch_size, "seed": self.hp.runtime.seed,
                "backend": self.data.backend}


def prepare(hp, sparse_path, record=None):
    """Device, data, the dense model, and the sparse model at `sparse_path` (returned separately);
    `record`: the arguments the run's checkpoints store (hparams.record)."""
    source, runtime = hp.source, hp.runtime
    device = resolve_device(runtime.device)
    precision = resolve_precision(runtime.precision, device, runtime.compile)
    set_seed(runtime.seed)
    sparse, sparse_ckpt = model_from_checkpoint(sparse_path, source.m_name, expect="sparse",
                                                trust_pickle=source.trust_pickle)
    compute = ComputeLedger.starting_from(sparse_ckpt, sparse_path)
    dense_path = source.dense_path()
    dense, _ = model_from_checkpoint(dense_path, source.m_name, expect="dense", trust_pickle=source.trust_pickle)
    data = cli.build_data(hp.data, runtime.seed, device, source.m_name)
    log(data.describe() + f" | device {device} | precision {precision.name}")
    dense = to_device(dense, device, precision).eval()
    sparse = to_device(sparse, device, precision)
    names = [n for n, _ in masked_modules(sparse)]
    total = count_pruned_params(sparse)[0]
    cache = DiskCache(hp.search.cache_dir or None)
    reward_subset, reward_val_subset = hp.reward.reward_subset, hp.reward.reward_val_subset
    setup = RegrowthSetup(hp, device, precision, data, dense, dense_path, names, total, cache,
                          state_digest(dense.state_dict()) if cache.folder else "",
                          data.subset("train", reward_subset, seed=runtime.seed),
                          data.subset("val", reward_val_subset, seed=runtime.seed), compute,
                          MacCounter(dense, data.spec.image_size), record)
    if reward_subset or reward_val_subset:
        log(f"episode rewards: mini-finetune on {len(setup.reward_train.dataset):,} training images, "
            f"scored on {len(setup.reward_val.dataset):,} validation images")
    return setup, sparse, sparse_ckpt


def work_model_like(setup, state):
    """A preallocated working model on the device holding `state`."""
    model = to_device(model_loader(setup.hp.source.m_name, dataset=setup.data.spec.name), setup.device, setup.precision)
    return load_state_into(model, state)


def calibrated_reference(setup, model, reference_fn, full_val_acc=None):
    """The reward's reference accuracy on the images episodes are scored on.

    Episode accuracies come from the reward validation subset; references (the sparse model's
    accuracy, the pruning curve) are full-validation numbers, so they are shifted by how much easier
    or harder the subset is for `model`, the model the episodes start from: acc(model, subset) -
    acc(model, full val) (`full_val_acc` when the caller has measured it). No shift without a subset.
    """
    if setup.reward_val is setup.data.val:
        return reference_fn
    full = full_val_acc
    if full is None:
        full, _ = evaluate(model, setup.data.val, setup.device, setup.precision)
    sub, _ = evaluate(model, setup.reward_val, setup.device, setup.precision)
    log(f"reward validation subset: {sub:.2f} vs full validation {full:.2f}; references shifted by {sub - full:+.2f}")
    return lambda sparsity: reference_fn(sparsity) + (sub - full)


def reward_proxy(reward, steps, gradient=None):
    """The episodes' reward proxy (steps: the mini-finetune length, for the steps proxy; gradient: what
    computes the gradient proxy's scores, where the kind of regrowth has them)."""
    return make_reward_proxy(reward.reward_proxy, metric=reward.reward_metric, steps=steps,
                             schedule=reward.mini_finetune_schedule, repeats=reward.reward_repeats,
                             bn_batches=reward.bn_batches, gradient=gradient)


def make_reinforce(hp, shape, budget_space_size=0):
    """The controller and its REINFORCE update for a search of `shape` (hparams.PolicyShape)."""
    agent = RegrowthAgent(shape.action_space_size, hp.controller.hidden_size, budget_space_size)
    return Reinforce(agent, hp.controller.reinforce_config(hp.search.num_epochs, shape.advantage, shape.clip))


def search_config(hp, space, seed, budget=None, budget_options=None, position="oneshot", guard=None, top_up=None):
    return SearchConfig(allocator=hp.search.allocator, num_episodes=hp.search.num_epochs, budget=budget,
                        budget_options=budget_options, position=position, guard_layer=guard, seed=seed,
                        units=space.units, top_up_order=top_up, episodes_per_update=hp.search.episodes_per_update)
