"""What every regrowth script shares: flags, loading the dense and sparse models, SSIM search space,
saliency, the controller, the final finetune and the written outputs.

The top-level regrowth scripts only decide the budget and the reward reference (one-shot: the
sparse model's val accuracy; iterative: the pruning curve) and call these pieces in order.
"""
import math
import os
import time
from dataclasses import dataclass

import torch

from models import MODEL_NAMES, canonical_model_name, model_loader
from utils import cli
from utils.allocators import ALLOCATORS
from utils.checkpoints import load_state_into, model_from_checkpoint, save_checkpoint
from utils.controller import Reinforce, ReinforceConfig, RegrowthAgent
from utils.errors import BridgeError, UnknownChoiceError
from utils.features import format_ssim_table, layer_ssim, select_search_space
from utils.masks import count_pruned_params, masked_modules
from utils.plots import plot_allocation, plot_search_curves
from utils.progress import log
from utils.regrowth import INIT_ALIASES, INIT_STRATEGIES, canonical_init, dense_reference_weights, layer_capacities
from utils.runtime import Precision, resolve_device, resolve_precision, set_seed, to_device
from utils.saliency import layer_mean_saliency, weight_saliency
from utils.training import adamw_finetune_optimizer, evaluate, finetune


def add_search_args(p, *, m_name="effnet", num_epochs=400, patience=50, ssim_num_batches=64, save_dir,
                    init_choices=INIT_STRATEGIES + tuple(INIT_ALIASES)):
    """Flags shared by the one-shot and iterative scripts, with the published defaults."""
    p.add_argument("--m_name", default=m_name, help=f"model: {', '.join(MODEL_NAMES)}")
    p.add_argument("--dense_ckpt", default=None,
                   help="dense pretrained model (default {work_dir}/{m_name}/checkpoint/ckpt.pth)")
    p.add_argument("--work_dir", default=".", help="folder holding the {m_name}/ tree of the earlier stages")
    p.add_argument("--save_dir", default=save_dir, help="where the regrowth outputs go")
    p.add_argument("--tag", default="", help="suffix for the output folder (e.g. a seed or an experiment name)")
    g = p.add_argument_group("search")
    g.add_argument("--allocator", default="rl", choices=ALLOCATORS,
                   help="rl: LSTM controller; random: random search; greedy / proportional / uniform: one allocation")
    g.add_argument("--num_epochs", type=int, default=num_epochs, help="maximum number of search episodes")
    g.add_argument("--learning_rate", type=float, default=3e-4, help="controller Adam learning rate")
    g.add_argument("--hidden_size", type=int, default=64)
    g.add_argument("--start_beta", type=float, default=0.40)
    g.add_argument("--end_beta", type=float, default=0.04)
    g.add_argument("--decay_fraction", type=float, default=0.4)
    g.add_argument("--budget_bonus", type=float, default=0.005)
    g.add_argument("--early_stop_patience", type=int, default=patience)
    g.add_argument("--min_epochs", type=int, default=50)
    g.add_argument("--reward_std_threshold", type=float, default=0.002)
    g.add_argument("--reward_window_size", type=int, default=20)
    g.add_argument("--ssim_threshold", type=float, default=0.0, help="layers with SSIM <= this are searched")
    g.add_argument("--ssim_num_batches", type=int, default=ssim_num_batches, help="validation batches for SSIM")
    g.add_argument("--include_linear", action="store_true", help="let Linear layers (no SSIM) join the search")
    g.add_argument("--init_strategy", default="zero", choices=init_choices,
                   help="initial value of regrown weights (reference = dense pretrained value; magnitude = alias)")
    g.add_argument("--saliency_batches", type=int, default=None, help="limit the saliency pass (default: one epoch)")
    g.add_argument("--mini_finetune_epochs", type=float, default=None, help="per-episode finetune length in epochs")
    g.add_argument("--mini_finetune_steps", type=int, default=None, help="per-episode finetune length in steps")
    g.add_argument("--resume", action="store_true", help="continue an interrupted search")
    g.add_argument("--trust_pickle", action="store_true", help="allow reading pickled published checkpoints")
    f = p.add_argument_group("final finetune")
    f.add_argument("--finetune_epochs", type=float, default=None, help="finetune of the best allocation (0 skips)")
    f.add_argument("--finetune_scope", default="all", choices=("all", "regrown"),
                   help="all: every weight trains; regrown: only the regrown weights change")
    f.add_argument("--finetune_lr", type=float, default=3e-4)
    cli.add_data_args(p)
    cli.add_runtime_args(p)
    g.add_argument("--no_wandb", action="store_true", help="accepted for compatibility; wandb is only used with --wandb")
    g.add_argument("--wandb", action="store_true", help="also log episodes to Weights & Biases (imported lazily)")


def validate_search_args(args):
    args.m_name = canonical_model_name(args.m_name)
    args.init_strategy = canonical_init(args.init_strategy)
    if args.allocator not in ALLOCATORS:
        raise UnknownChoiceError("allocator", args.allocator, ALLOCATORS)
    if args.num_epochs < 1:
        raise BridgeError("--num_epochs must be at least 1")
    if args.mini_finetune_epochs is not None and args.mini_finetune_steps is not None:
        raise BridgeError("give --mini_finetune_epochs or --mini_finetune_steps, not both")


@dataclass
class RegrowthSetup:
    """Everything loaded once per run."""

    args: object
    device: torch.device
    precision: Precision
    data: object
    dense: torch.nn.Module
    dense_path: str
    masked_names: list
    total_weights: int


def dense_checkpoint_path(args):
    if args.dense_ckpt:
        return args.dense_ckpt
    folder = os.path.join(args.work_dir, args.m_name, "checkpoint")
    ours, published = os.path.join(folder, "ckpt.pth"), os.path.join(folder, f"pretrain_{args.m_name}_ckpt.pth")
    return published if not os.path.isfile(ours) and os.path.isfile(published) else ours


def prepare(args, sparse_path):
    """Device, data, the dense model, and the sparse model at `sparse_path` (returned separately)."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    set_seed(args.seed)
    sparse, sparse_ckpt = model_from_checkpoint(sparse_path, args.m_name, expect="sparse",
                                                trust_pickle=args.trust_pickle)
    dense_path = dense_checkpoint_path(args)
    dense, _ = model_from_checkpoint(dense_path, args.m_name, expect="dense", trust_pickle=args.trust_pickle)
    data = cli.build_data(args, device)
    log(data.describe() + f" | device {device} | precision {precision.name}")
    dense = to_device(dense, device, precision).eval()
    sparse = to_device(sparse, device, precision)
    names = [n for n, _ in masked_modules(sparse)]
    total = count_pruned_params(sparse)[0]
    return RegrowthSetup(args, device, precision, data, dense, dense_path, names, total), sparse, sparse_ckpt


def work_model_like(setup, state):
    """A preallocated working model on the device holding `state`."""
    model = to_device(model_loader(setup.args.m_name), setup.device, setup.precision)
    return load_state_into(model, state)


def search_space(setup, model, capacities_of=layer_capacities):
    """SSIM per masked conv layer (dense vs `model`) and the ordered search space; prints the table."""
    args = setup.args
    t0 = time.perf_counter()
    ssim = layer_ssim(setup.dense, model, setup.data.val, setup.device, setup.masked_names, args.ssim_num_batches,
                      Precision(None, setup.precision.channels_last))
    names, fallback = select_search_space(ssim, setup.masked_names, args.ssim_threshold, args.include_linear)
    caps_all = capacities_of(model, setup.masked_names)
    names = [n for n in names if caps_all[n] > 0] or names
    log(f"SSIM (dense vs sparse, {args.ssim_num_batches} val batches, {time.perf_counter() - t0:.1f} s):")
    log(format_ssim_table(ssim, setup.masked_names, names, caps_all))
    if fallback:
        log(f"no layer has SSIM <= {args.ssim_threshold}: searching only the lowest-SSIM layer {names[0]} "
            "(raise --ssim_threshold to search more layers)")
    return names, ssim, {n: caps_all[n] for n in names}


def compute_saliency(setup, names, with_taylor=False):
    t0 = time.perf_counter()
    sal = weight_saliency(setup.dense, setup.data.train, names, setup.device, setup.args.saliency_batches,
                          Precision(None, setup.precision.channels_last), with_taylor=with_taylor)
    means = layer_mean_saliency(sal[0] if with_taylor else sal)
    log(f"saliency (dL/dθ)²·θ² on the dense model over {setup.args.saliency_batches or len(setup.data.train)} "
        f"train batches: {time.perf_counter() - t0:.1f} s; mean per layer "
        + ", ".join(f"{n} {v:.2e}" for n, v in list(means.items())[:6]) + (" ..." if len(means) > 6 else ""))
    return sal


def mini_finetune_steps(args, steps_per_epoch, published_epochs):
    if args.mini_finetune_steps is not None:
        return args.mini_finetune_steps
    epochs = published_epochs if args.mini_finetune_epochs is None else args.mini_finetune_epochs
    return max(1, int(round(epochs * steps_per_epoch)))


def make_reinforce(args, iterative, action_space_size, budget_space_size=0):
    agent = RegrowthAgent(action_space_size, args.hidden_size, budget_space_size)
    cfg = ReinforceConfig(
        learning_rate=args.learning_rate, advantage="window_std" if iterative else "temperature",
        reward_temperature=getattr(args, "reward_temperature", 0.005), advantage_clip=10.0 if iterative else 100.0,
        start_beta=args.start_beta, end_beta=args.end_beta, decay_fraction=args.decay_fraction,
        num_episodes=args.num_epochs, early_stop_patience=args.early_stop_patience, min_episodes=args.min_epochs,
        reward_std_threshold=args.reward_std_threshold, reward_window_size=args.reward_window_size)
    return Reinforce(agent, cfg)


def restrict_to_regrown(model, regrown_idx):
    """Freeze everything but the regrown weights; returns an after_step hook restoring the rest exactly.

    Only the weight_orig tensors that received regrown weights stay trainable, and after each optimizer
    step their other entries are put back (AdamW's decoupled decay would otherwise move them).
    """
    modules = dict(model.named_modules())
    keep = {}
    for p in model.parameters():
        p.requires_grad_(False)
    for name, idx in regrown_idx.items():
        if idx.numel() == 0:
            continue
        w = modules[name].weight_orig
        w.requires_grad_(True)
        sel = torch.zeros(w.numel(), dtype=torch.bool)
        sel[idx] = True
        keep[name] = (sel.view(w.shape).to(w.device), w.detach().clone())

    @torch.no_grad()
    def after_step(m):
        for name, (sel, frozen) in keep.items():
            w = modules[name].weight_orig
            w.copy_(torch.where(sel, w, frozen))

    return after_step


def cosine_with_warmup(optimizer, total_steps, warmup_fraction=0.05):
    """The published full-finetune schedule: linear warm-up over 5% of the steps, then cosine to 0."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step):
        if step < warmup:
            return step / max(warmup, 1)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def final_finetune(setup, model, regrown_idx, epochs, desc="final finetune"):
    """Finetune the regrown model (scope per --finetune_scope); returns (val, test, FinetuneResult or None)."""
    args = setup.args
    res = None
    if epochs and epochs > 0:
        after = restrict_to_regrown(model, regrown_idx) if args.finetune_scope == "regrown" else None
        params = [p for p in model.parameters() if p.requires_grad]
        weight_decay = 0.0 if args.finetune_scope == "regrown" else 0.01
        opt = torch.optim.AdamW(params, lr=args.finetune_lr, weight_decay=weight_decay)
        steps = max(1, int(round(epochs * len(setup.data.train))))
        set_seed(args.seed)
        res = finetune(model, setup.data.train, setup.data.val, opt, setup.device, setup.precision, steps=steps,
                       scheduler=cosine_with_warmup(opt, steps), desc=desc, after_step=after)
        for p in model.parameters():
            p.requires_grad_(True)
    val_acc, _ = evaluate(model, setup.data.val, setup.device, setup.precision)
    test_acc, _ = evaluate(model, setup.data.test, setup.device, setup.precision)
    return val_acc, test_acc, res


def write_search_outputs(out_dir, rows, names, best_alloc, capacities, ssim, title):
    """Reward/entropy curves and the best allocation per layer as PNGs."""
    curves = plot_search_curves(rows, os.path.join(out_dir, "search_curves.png"), title)
    alloc = plot_allocation(names, best_alloc, capacities, ssim, os.path.join(out_dir, "allocation.png"), title)
    return curves, alloc


def save_model(path, model, setup, stage, metrics, **extra):
    return save_checkpoint(path, model, setup.args.m_name, setup.data.spec.name, stage, setup.args, metrics, **extra)

