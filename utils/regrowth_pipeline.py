"""The regrowth stage, shared by the four regrowth scripts (unstructured / structured, one-shot / iterative).

    one-shot:  SSIM search space -> budget -> search (episodes: allocate, regrow, mini-finetune, reward)
               -> best allocation -> final finetune -> checkpoints, logs, summary, plots
    iterative: per iteration, the same with a budget searched too and a reward against the pruning
               curve; the best episode's mini-finetuned model starts the next iteration

What a unit of regrowth is (a layer's weights, or a channel group's filters) lives in
utils/regrowth_kinds.py; the scripts only set published defaults, the budget and the reward reference.
"""
import glob
import math
import os
import time
from dataclasses import dataclass

import torch

from models import MODEL_NAMES, canonical_model_name, model_loader
from utils import cli
from utils import distributed as dist
from utils import paths
from utils.allocators import ALLOCATORS
from utils.cache import DiskCache, default_cache_dir, state_digest
from utils.compute import ComputeLedger, MacCounter, pass_flops
from utils.checkpoints import jsonable, load_checkpoint, load_state_into, model_from_checkpoint, save_checkpoint
from utils.controller import Reinforce, ReinforceConfig, RegrowthAgent
from utils.errors import BridgeError, UnknownChoiceError
from utils.masks import count_pruned_params, masked_modules
from utils.plots import plot_accuracy_vs_sparsity, plot_allocation, plot_search_curves
from utils.progress import log
from utils.pruning_curve import load_pruning_curve
from utils.records import WandbLog, append_jsonl, read_jsonl, write_json, write_jsonl
from utils.regrowth import INIT_ALIASES, INIT_STRATEGIES, canonical_init
from utils.regrowth_search import RegrowthEnv, SearchConfig, ensure_best_states, run_search, search_flops
from utils.reward_proxies import LR_SCHEDULES, REWARD_METRICS, REWARD_PROXIES, make_reward_proxy
from utils.runtime import Precision, resolve_device, resolve_precision, set_seed, to_device
from utils.stats import first_vs_last
from utils.training import clone_state, evaluate, finetune


def add_search_args(p, *, m_name="effnet", num_epochs=400, patience=50, ssim_num_batches=64, save_dir,
                    init_default="zero", init_choices=INIT_STRATEGIES + tuple(INIT_ALIASES), mini_epochs=50,
                    budget_bonus=0.005):
    """Flags shared by every regrowth script, with the published defaults."""
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
    g.add_argument("--reward_temperature", type=float, default=0.005, help="advantage scale τ (where used)")
    g.add_argument("--entropy_coef", type=float, default=0.5, help="accepted for compatibility (unused, as published)")
    g.add_argument("--budget_bonus", type=float, default=budget_bonus, help="reward weight of the budget usage")
    g.add_argument("--early_stop_patience", type=int, default=patience)
    g.add_argument("--min_epochs", type=int, default=50)
    g.add_argument("--reward_std_threshold", type=float, default=0.002)
    g.add_argument("--reward_window_size", type=int, default=20)
    g.add_argument("--ssim_threshold", type=float, default=0.0, help="units with SSIM <= this are searched")
    g.add_argument("--ssim_num_batches", type=int, default=ssim_num_batches, help="validation batches for SSIM")
    g.add_argument("--include_linear", action="store_true", help="let Linear layers (no SSIM) join the search")
    g.add_argument("--init_strategy", default=init_default, choices=init_choices,
                   help="initial value of what is regrown (reference = the dense pretrained value)")
    g.add_argument("--saliency_batches", type=int, default=None, help="limit the saliency pass (default: one epoch)")
    g.add_argument("--reward_proxy", default="steps", choices=REWARD_PROXIES,
                   help="how an episode scores its regrown model: steps = the published mini-finetune (below); "
                        "bn = BatchNorm statistics re-estimated on --bn_batches training batches, no weight update; "
                        "saliency = the restored share of the search space's saliency, no pass at all; gradient = "
                        "the freed share of the start model's |dL/dθ| at pruned positions, one pass per search "
                        "(README Speed: cost and ranking quality of each)")
    g.add_argument("--reward_metric", default="acc", choices=REWARD_METRICS,
                   help="what the steps / bn proxies score: acc (published) or loss (reference loss - val loss; "
                        "one-shot only)")
    g.add_argument("--bn_batches", type=int, default=8, help="bn proxy: training batches for the statistics")
    g.add_argument("--mini_finetune_epochs", type=float, default=mini_epochs,
                   help=f"per-episode finetune length in epochs (published {mini_epochs})")
    g.add_argument("--mini_finetune_steps", type=int, default=None, help="per-episode finetune length in steps "
                   "(overrides --mini_finetune_epochs)")
    g.add_argument("--mini_finetune_schedule", default=None, choices=LR_SCHEDULES,
                   help="per-episode learning rate: constant (published) or cosine, annealed to 0 over the "
                        "mini-finetune (default constant; --fast: see FAST_PRESET)")
    g.add_argument("--reward_repeats", type=int, default=None,
                   help="mini-finetunes per episode, each with another data order; the reward uses their mean "
                        "accuracy (default 1, published; --fast: see FAST_PRESET)")
    g.add_argument("--reward_subset", type=int, default=None,
                   help="mini-finetune on a fixed random subset of this many training images (default: all)")
    g.add_argument("--reward_val_subset", type=int, default=None,
                   help="score episodes on a fixed random subset of this many validation images (default: all)")
    g.add_argument("--fast", action="store_true",
                   help=f"proxy-reward preset: {', '.join(f'--{k} {v}' for k, v in FAST_PRESET.items())} "
                        "(each only where not given explicitly); the published settings stay the default")
    g.add_argument("--cache_dir", default=default_cache_dir(),
                   help="cache of saliency / SSIM results ('' disables; default $BRIDGE_CACHE_DIR or .cache/bridge)")
    g.add_argument("--episodes_per_update", type=int, default=1,
                   help="episodes sampled from one policy before each update; under torchrun they run in parallel "
                        "(set it to --nproc_per_node)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted search")
    g.add_argument("--trust_pickle", action="store_true", help="allow reading pickled published checkpoints")
    g.add_argument("--no_wandb", action="store_true", help="accepted for compatibility; wandb is only used with --wandb")
    g.add_argument("--wandb", action="store_true", help="also log episodes to Weights & Biases (imported lazily)")
    g.add_argument("--selection", default="saliency", choices=SELECTIONS,
                   help="which pruned weights of a layer come back (unstructured): saliency (dL/dθ)²·θ² on the dense "
                        "model (published); magnitude: largest dense |w|; gradient: largest |dL/dθ| of the sparse "
                        "start model over the saliency batches (RigL's growth criterion); random")
    f = p.add_argument_group("final finetune")
    f.add_argument("--finetune_epochs", type=float, default=None, help="finetune of the best result (0/none skips)")
    f.add_argument("--finetune_steps", type=int, default=None,
                   help="finetune length in optimizer steps (instead of --finetune_epochs)")
    f.add_argument("--finetune_schedule", default="cosine", choices=FINETUNE_SCHEDULES,
                   help="cosine: the published 5%% linear warm-up then cosine to 0; constant: the pruning stage's "
                        "constant learning rate (one recipe for regrown and directly pruned models)")
    f.add_argument("--eval_every", type=int, default=None,
                   help="evaluate the final finetune (and keep its best state) every this many steps instead of "
                        "every epoch; the evaluations go to final_finetune_evals.jsonl")
    f.add_argument("--finetune_scope", default="all", choices=("all", "regrown"),
                   help="all: every weight trains; regrown: only the regrown weights change")
    f.add_argument("--finetune_lr", type=float, default=3e-4)
    cli.add_data_args(p)
    cli.add_runtime_args(p)


# What --fast changes (README "Speed"): 150-step mini-finetunes with the learning rate annealed to 0
# (cosine), three of them per episode (different data orders, mean accuracy: one short run ranks
# allocations too noisily), a 2,000-image reward validation subset and a saliency pass over 100 batches.
# bench/proxy_fidelity.py measures how well its rewards rank allocations compared with a long finetune;
# 150 steps keep evaluation + regrowth under 5% of an episode (bench/episode_breakdown.py).
FINETUNE_SCHEDULES = ("cosine", "constant")
SELECTIONS = ("saliency", "magnitude", "gradient", "random")

FAST_PRESET = {"mini_finetune_steps": 150, "mini_finetune_schedule": "cosine", "reward_repeats": 3,
               "reward_val_subset": 2000, "saliency_batches": 100}


def validate_search_args(args, structured=False):
    args.m_name = canonical_model_name(args.m_name)
    if getattr(args, "fast", False):
        for key, value in FAST_PRESET.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    if getattr(args, "mini_finetune_schedule", None) is None:
        args.mini_finetune_schedule = "constant"
    if getattr(args, "reward_repeats", None) is None:
        args.reward_repeats = 1
    if args.reward_repeats < 1:
        raise BridgeError("--reward_repeats must be at least 1")
    proxy = getattr(args, "reward_proxy", "steps")
    if proxy not in REWARD_PROXIES:
        raise UnknownChoiceError("reward proxy", proxy, REWARD_PROXIES)
    if proxy == "bn" and getattr(args, "bn_batches", 8) < 1:
        raise BridgeError("--bn_batches must be at least 1")
    if structured:
        from utils.structured_regrowth import check_structured_init

        args.init_strategy = check_structured_init(args.init_strategy)
    else:
        args.init_strategy = canonical_init(args.init_strategy)
        if proxy == "bn" and args.init_strategy == "zero":
            raise BridgeError("--reward_proxy bn cannot tell allocations apart with --init_strategy zero: weights "
                              "regrown at 0 leave the model's function unchanged; use an init that changes it "
                              "(reference, kaiming, xavier) or another proxy")
    if args.allocator not in ALLOCATORS:
        raise UnknownChoiceError("allocator", args.allocator, ALLOCATORS)
    if args.num_epochs < 1:
        raise BridgeError("--num_epochs must be at least 1")
    selection = getattr(args, "selection", "saliency")
    if selection not in SELECTIONS:
        raise UnknownChoiceError("selection", selection, SELECTIONS)
    if selection != "saliency" and structured:
        raise BridgeError("--selection is for weight regrowth; filter regrowth ranks channels by --regrowth_score")
    if selection != "saliency" and proxy == "saliency":
        raise BridgeError(f"--reward_proxy saliency scores the saliency an allocation restores, but --selection "
                          f"{selection} does not restore by saliency; use another proxy or --selection saliency")
    if getattr(args, "finetune_steps", None) is not None and getattr(args, "finetune_epochs", None) is not None:
        raise BridgeError("give --finetune_steps or --finetune_epochs, not both")
    if getattr(args, "eval_every", None) is not None and args.eval_every < 1:
        raise BridgeError(f"--eval_every must be at least 1 step, got {args.eval_every}")


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
    cache: object = None
    dense_digest: str = ""
    reward_train: object = None
    reward_val: object = None
    compute: ComputeLedger = None   # training FLOPs of this run, on top of the start checkpoint's
    macs: MacCounter = None         # non-zero MACs per image of a model of this architecture

    def charge(self, stage, model, images, backward):
        """Count a pass of `images` images through `model` into the run's training FLOPs (utils.compute)."""
        if self.compute is not None and self.macs is not None:
            self.compute.add_pass(stage, self.macs(model), images, backward)

    def data_key(self):
        """What about the data changes a cached result."""
        a = self.args
        return {"dataset": self.data.spec.name, "sizes": self.data.sizes, "val_split": a.val_split,
                "batch": a.batch_size, "eval_batch": a.eval_batch_size, "seed": a.seed, "backend": self.data.backend}


def dense_checkpoint_path(args):
    return args.dense_ckpt or paths.dense_checkpoint(args.work_dir, args.m_name)


def prepare(args, sparse_path):
    """Device, data, the dense model, and the sparse model at `sparse_path` (returned separately)."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, args.compile)
    set_seed(args.seed)
    sparse, sparse_ckpt = model_from_checkpoint(sparse_path, args.m_name, expect="sparse",
                                                trust_pickle=args.trust_pickle)
    compute = ComputeLedger.starting_from(sparse_ckpt, sparse_path)
    dense_path = dense_checkpoint_path(args)
    dense, _ = model_from_checkpoint(dense_path, args.m_name, expect="dense", trust_pickle=args.trust_pickle)
    data = cli.build_data(args, device)
    log(data.describe() + f" | device {device} | precision {precision.name}")
    dense = to_device(dense, device, precision).eval()
    sparse = to_device(sparse, device, precision)
    names = [n for n, _ in masked_modules(sparse)]
    total = count_pruned_params(sparse)[0]
    cache = DiskCache(getattr(args, "cache_dir", None) or None)
    reward_subset, reward_val_subset = getattr(args, "reward_subset", None), getattr(args, "reward_val_subset", None)
    setup = RegrowthSetup(args, device, precision, data, dense, dense_path, names, total, cache,
                          state_digest(dense.state_dict()) if cache.folder else "",
                          data.subset("train", reward_subset, seed=args.seed),
                          data.subset("val", reward_val_subset, seed=args.seed), compute,
                          MacCounter(dense, data.spec.image_size))
    if reward_subset or reward_val_subset:
        log(f"episode rewards: mini-finetune on {len(setup.reward_train.dataset):,} training images, "
            f"scored on {len(setup.reward_val.dataset):,} validation images")
    return setup, sparse, sparse_ckpt


def work_model_like(setup, state):
    """A preallocated working model on the device holding `state`."""
    model = to_device(model_loader(setup.args.m_name), setup.device, setup.precision)
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


def mini_finetune_steps(args, steps_per_epoch):
    if args.mini_finetune_steps is not None:
        return args.mini_finetune_steps
    return max(1, int(round(args.mini_finetune_epochs * steps_per_epoch)))


def reward_proxy(args, steps, gradient=None):
    """The episodes' reward proxy from the flags (steps: the mini-finetune length, for the steps proxy;
    gradient: what computes the gradient proxy's scores, where the kind of regrowth has them)."""
    return make_reward_proxy(args.reward_proxy, metric=args.reward_metric, steps=steps,
                             schedule=args.mini_finetune_schedule, repeats=args.reward_repeats,
                             bn_batches=args.bn_batches, gradient=gradient)


def make_reinforce(args, action_space_size, budget_space_size=0, advantage="temperature", clip=100.0):
    agent = RegrowthAgent(action_space_size, args.hidden_size, budget_space_size)
    cfg = ReinforceConfig(
        learning_rate=args.learning_rate, advantage=advantage, reward_temperature=args.reward_temperature,
        advantage_clip=clip, start_beta=args.start_beta, end_beta=args.end_beta, decay_fraction=args.decay_fraction,
        num_episodes=args.num_epochs, early_stop_patience=args.early_stop_patience, min_episodes=args.min_epochs,
        reward_std_threshold=args.reward_std_threshold, reward_window_size=args.reward_window_size)
    return Reinforce(agent, cfg)


def weight_masks(model):
    """{module: CPU copy of its weight mask} of the masked Conv2d / Linear layers."""
    return {name: m.weight_mask.detach().cpu().clone() for name, m in masked_modules(model)}


def regrown_since(start_masks, model):
    """{module: flat weight indices} alive in `model` but pruned in `start_masks` (from weight_masks).

    Regrowth only turns masks on, so after several regrowth steps this is the union of every step's
    regrown positions (for --finetune_scope regrown); modules with nothing regrown are left out.
    """
    out = {}
    for name, m in masked_modules(model):
        grown = (m.weight_mask.detach().cpu() > 0) & (start_masks[name] == 0)
        if grown.any():
            out[name] = grown.flatten().nonzero().flatten()
    return out


def restrict_to_regrown(model, weight_idx):
    """Freeze everything but the regrown weights; returns an after_step hook restoring the rest exactly.

    Only the weight_orig tensors that received regrown weights stay trainable, and after each optimizer
    step their other entries are put back (AdamW's decoupled decay would otherwise move them).
    """
    modules = dict(model.named_modules())
    keep = {}
    for p in model.parameters():
        p.requires_grad_(False)
    for name, idx in weight_idx.items():
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


def final_finetune_steps(args, steps_per_epoch):
    """The final finetune's length in steps from --finetune_steps / --finetune_epochs (0: none)."""
    if getattr(args, "finetune_steps", None) is not None:
        return max(0, int(args.finetune_steps))
    epochs = args.finetune_epochs or 0
    return max(1, int(round(epochs * steps_per_epoch))) if epochs > 0 else 0


def final_finetune(setup, model, weight_idx, steps, desc="final finetune", evals_path=None):
    """Finetune the regrown model `steps` steps (scope per --finetune_scope, schedule per --finetune_schedule);
    returns (val, test, FinetuneResult or None). With --eval_every each evaluation is a row of `evals_path`."""
    args = setup.args
    res = None
    regrown_only = args.finetune_scope == "regrown"
    if not steps or steps <= 0:
        pass
    elif regrown_only and not any(idx.numel() for idx in weight_idx.values()):
        log(f"{desc}: nothing was regrown, so --finetune_scope regrown has no weights to train; skipped")
    else:
        after = restrict_to_regrown(model, weight_idx) if regrown_only else None
        params = [p for p in model.parameters() if p.requires_grad]
        weight_decay = 0.0 if regrown_only else 0.01
        opt = torch.optim.AdamW(params, lr=args.finetune_lr, weight_decay=weight_decay)
        schedule = cosine_with_warmup(opt, steps) if getattr(args, "finetune_schedule", "cosine") == "cosine" else None
        eval_every = getattr(args, "eval_every", None)
        if evals_path and eval_every and dist.is_main() and os.path.isfile(evals_path):
            os.remove(evals_path)
        macs, spent = setup.macs(model) if setup.macs else 0, setup.compute.total if setup.compute else 0.0

        def on_eval(row, _best_state):
            if evals_path and eval_every and dist.is_main():
                append_jsonl(evals_path, {**row, "training_flops": spent + pass_flops(macs, row["images"], True)})

        set_seed(args.seed)
        res = finetune(model, setup.data.train, setup.data.val, opt, setup.device, setup.precision, steps=steps,
                       scheduler=schedule, desc=desc, after_step=after, ddp=True, eval_every=eval_every,
                       on_eval=on_eval)
        setup.charge("final_finetune", model, res.images, backward=True)
        for p in model.parameters():
            p.requires_grad_(True)
    val_acc, _ = evaluate(model, setup.data.val, setup.device, setup.precision)
    test_acc, _ = evaluate(model, setup.data.test, setup.device, setup.precision)
    return val_acc, test_acc, res


def save_model(path, model, setup, stage, metrics, kind, **extra):
    """A checkpoint of `model` with the run's training FLOPs so far (utils.compute)."""
    if setup.compute is not None:
        extra.setdefault("training_flops", setup.compute.record())
    return save_checkpoint(path, model, setup.args.m_name, setup.data.spec.name, stage, setup.args, metrics,
                           sparsity=kind.sparsity(model), **extra)


def write_search_outputs(out_dir, rows, space, best_alloc, title):
    """Reward/entropy curves and the best allocation per unit as PNGs."""
    curves = plot_search_curves(rows, os.path.join(out_dir, "search_curves.png"), title)
    alloc = plot_allocation(space.names, best_alloc, space.capacities, space.ssim,
                            os.path.join(out_dir, "allocation.png"), title)
    return curves, alloc


def _search_config(args, space, budget=None, budget_options=None, position="oneshot", guard=None, top_up=None):
    return SearchConfig(allocator=args.allocator, num_episodes=args.num_epochs, budget=budget,
                        budget_options=budget_options, position=position, guard_layer=guard, seed=args.seed,
                        units=space.units, top_up_order=top_up, episodes_per_update=args.episodes_per_update)


# ------------------------------------------------------------------------------------------------
# one-shot
# ------------------------------------------------------------------------------------------------

def run_oneshot(args, kind_cls, *, sparse_path, out_dir, requested, reference, script, rl_options):
    """One regrowth step (see module docstring).

    requested(setup, kind) -> budget asked for; reference(setup, kind, sparse_val) -> fn(sparsity) giving
    the reward's reference accuracy; rl_options: {action_space_size, advantage, clip, position, top_up}.
    """
    cli.print_args(args, script)
    cli.check_writable(out_dir)
    t_run = time.perf_counter()
    setup, sparse, _ = prepare(args, sparse_path)
    kind = kind_cls(setup)
    want = requested(setup, kind)
    space = kind.search_space(sparse, top_up_to=want if rl_options.get("top_up") else None)
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

    steps = mini_finetune_steps(args, len(setup.data.train))
    proxy = reward_proxy(args, steps, gradient=(lambda: kind.pruned_gradient(sparse, space.names))
                         if hasattr(kind, "pruned_gradient") else None)
    env = RegrowthEnv(work_model_like(setup, sparse.state_dict()), clone_state(sparse), regrower, setup.reward_train,
                      setup.reward_val, setup.device, setup.precision, proxy, ref_fn, args.budget_bonus, kind.total(),
                      args.seed, macs=setup.macs)
    reinforce = (make_reinforce(args, rl_options["action_space_size"], 0, rl_options["advantage"], rl_options["clip"])
                 if args.allocator == "rl" else None)
    wandb = WandbLog(args.wandb, "bridge_" + kind.stage_prefix, f"{args.m_name}_{start_sparsity:.4f}", vars(args))
    log(f"search: allocator {args.allocator}, up to {args.num_epochs} episodes; reward proxy per episode: "
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
        acc_baseline = getattr(args, "acc_baseline", None)
        if acc_baseline is not None and result.val_acc / 100 > acc_baseline:
            env.model.load_state_dict(result.pre_state)
            save_model(os.path.join(out_dir, f"baseline_exceeded_ep{e + 1}_acc{result.val_acc:.2f}.pth"), env.model,
                       setup, f"{stage}_baseline_exceeded", {"val_acc_after_mini_finetune": result.val_acc}, kind,
                       allocation=result.allocation, episode=e + 1)

    cfg = _search_config(args, space, budget=budget, position=rl_options["position"],
                         top_up=kind.top_up_order(space, sparse) if rl_options.get("top_up") else None)
    outcome = run_search(env, space.names, space.ssim, space.capacities, cfg, reinforce, out_dir, args.resume,
                         on_best, on_episode, tag=f"oneshot {args.allocator}")
    setup.compute.add("search", search_flops(outcome.rows))
    best = outcome.best
    measured = (f"restored share {best.restored_share:.4f}" if proxy.metric == "share"
                else f"proxy val {best.val_acc:.2f} (reference {best.reference_acc:.2f})")
    log(f"search done: {outcome.episodes} episodes in {outcome.seconds:.0f} s ({outcome.stop_reason}); best episode "
        f"{outcome.best_episode + 1}: {measured}, reward {best.reward:+.4f}")
    learning = first_vs_last([r["reward"] for r in outcome.rows]) if args.allocator == "rl" else {}
    if learning.get("window", 0) >= 2:
        log(f"policy: mean reward of the last {learning['window']} episodes {learning['last_mean']:+.4f} ± "
            f"{learning['last_std']:.4f} vs the first {learning['window']}'s {learning['first_mean']:+.4f} ± "
            f"{learning['first_std']:.4f} (Welch t {learning['welch_t']:+.2f}, p = {learning['welch_p']:.3g})")

    # final finetune from the best allocation's regrown (pre-finetune) state: regrowing again with the
    # best episode's init seed rebuilds exactly the state saved as best_ep*.pth
    regrown, _ = env.regrow(best.allocation, outcome.best_episode)
    final = env.model
    ft_epochs = args.finetune_epochs or 0
    ft_steps = final_finetune_steps(args, len(setup.data.train))
    val_acc, test_acc, _ = final_finetune(setup, final, kind.weight_indices(regrown), ft_steps,
                                          evals_path=os.path.join(out_dir, "final_finetune_evals.jsonl"))
    final_sparsity = kind.sparsity(final)
    final_path = save_model(os.path.join(out_dir, "final_finetuned.pth"), final, setup, f"{stage}_final",
                            {"val_acc": val_acc, "test_acc": test_acc}, kind, allocation=best.allocation,
                            start_ckpt=sparse_path, start_sparsity=start_sparsity,
                            start_metrics={"val_acc": sparse_val, "test_acc": sparse_test},
                            finetune_epochs=ft_epochs, finetune_steps=ft_steps, finetune_scope=args.finetune_scope,
                            search_units=space.names, ssim=space.ssim)
    summary = {
        "model": args.m_name, "kind": kind.unit_label, "start_ckpt": sparse_path, "start_sparsity": start_sparsity,
        "final_sparsity": final_sparsity, "budget": budget, "regrown": best.regrown, "allocator": args.allocator,
        "sparse_val_acc": sparse_val, "sparse_test_acc": sparse_test, "best_episode": outcome.best_episode + 1,
        "best_reward": best.reward, "best_val_acc_after_mini_finetune": best.val_acc,
        "reference_acc_of_best": best.reference_acc, "episodes": outcome.episodes, "stop_reason": outcome.stop_reason,
        "search_seconds": outcome.seconds, "reward_first_vs_last": learning,
        "mini_finetune_steps": steps, "reward_proxy": proxy.describe(),
        "final_finetune_epochs": ft_epochs, "final_finetune_steps": ft_steps,
        "final_finetune_schedule": args.finetune_schedule, "selection": getattr(args, "selection", "saliency"),
        "training_flops": setup.compute.record(),
        "final_val_acc": val_acc, "final_test_acc": test_acc, "best_allocation": best.allocation,
        "search_layers": space.names, "ssim": space.ssim, "run_seconds": time.perf_counter() - t_run,
        "final_description": kind.describe(final), "seed": args.seed, "args": jsonable(args),
    }
    write_json(os.path.join(out_dir, "summary.json"), summary)
    with open(os.path.join(out_dir, "search_summary.txt") if dist.is_main() else os.devnull, "w") as fh:
        fh.write(f"model: {args.m_name}\nstart checkpoint: {sparse_path}\n"
                 f"sparsity: {start_sparsity:.4f} -> {final_sparsity:.4f} "
                 f"(regrew {best.regrown:,} {kind.unit_label} of a budget of {budget:,})\n"
                 f"sparse model val acc: {sparse_val:.2f}  test acc: {sparse_test:.2f}\n"
                 f"best episode: {outcome.best_episode + 1} of {outcome.episodes} ({outcome.stop_reason})\n"
                 f"reward proxy: {proxy.describe()} ({proxy.metric})\n"
                 f"best episode's {measured}\n"
                 f"best reward (proxy gain + budget bonus): {best.reward:+.4f}\n"
                 f"final finetune: {ft_steps} steps ({args.finetune_schedule} lr), scope {args.finetune_scope}\n"
                 f"training FLOPs from the dense model: {setup.compute.total:.4g} (this run {setup.compute.spent:.4g})\n"
                 f"final val acc: {val_acc:.2f}  test acc: {test_acc:.2f}\n"
                 f"search time: {outcome.seconds:.0f} s ({outcome.seconds / 3600:.2f} h)\n"
                 f"best allocation: {best.allocation}\n")
    curves, alloc_png = write_search_outputs(out_dir, outcome.rows, space, best.allocation,
                                             f"{args.m_name} one-shot {kind.unit_label} regrowth ({args.allocator})")
    wandb.finish()
    log(f"final: sparsity {final_sparsity:.4f} | val {val_acc:.2f} | test {test_acc:.2f} "
        f"(sparse start: val {sparse_val:.2f}, test {sparse_test:.2f})")
    log(f"wrote {final_path}, {os.path.join(out_dir, 'search_summary.txt')}, episodes.jsonl, {curves}, {alloc_png}")
    return summary


# ------------------------------------------------------------------------------------------------
# iterative
# ------------------------------------------------------------------------------------------------

def add_iterative_args(p, *, budget_space_size, min_frac, max_frac, num_iters, target_sparsity, alloc_space_size=10):
    p.add_argument("--method", default="iterative", help="output folder name under {save_dir}/{m_name}/")
    p.add_argument("--baseline_dir", default=None, help="folder of the pruning curve the reward compares with")
    p.add_argument("--initial_ckpt", default=None,
                   help="sparse start model (default: the sparsest checkpoint of --baseline_dir)")
    p.add_argument("--start_sparsity", type=float, default=None, help="label only (the published run name)")
    p.add_argument("--target_sparsity", type=float, default=target_sparsity, help="stop once the sparsity is at most this")
    p.add_argument("--num_iters", type=int, default=num_iters)
    p.add_argument("--budget_space_size", type=int, default=budget_space_size)
    p.add_argument("--alloc_space_size", type=int, default=alloc_space_size)
    p.add_argument("--min_budget_frac", type=float, default=min_frac)
    p.add_argument("--max_budget_frac", type=float, default=max_frac)
    p.add_argument("--resume_iter", type=int, default=None,
                   help="restart at this iteration from iter_{k-1}/best_grown_model.pth (default with --resume: "
                        "after the last finished iteration)")


def completed_iterations(run_dir):
    done = {}
    for path in glob.glob(os.path.join(run_dir, "iter_*", "best_grown_model.pth")):
        try:
            done[int(os.path.basename(os.path.dirname(path)).split("_")[1])] = path
        except ValueError:
            continue
    return done


def run_iterative(args, kind_cls, *, baseline_dir, run_dir, script, rl_options):
    """Several regrowth steps, each rewarded against the pruning curve in `baseline_dir`."""
    cli.check_fraction("--target_sparsity", args.target_sparsity)
    for name in ("min_budget_frac", "max_budget_frac"):
        cli.check_fraction(f"--{name}", getattr(args, name), low_inclusive=False)
    if args.min_budget_frac > args.max_budget_frac or args.budget_space_size < 1:
        raise BridgeError("need --min_budget_frac <= --max_budget_frac and --budget_space_size >= 1")
    if args.reward_proxy in ("saliency", "gradient") or args.reward_metric == "loss":
        raise BridgeError("the iterative search chooses the budget too, and only an accuracy set against the pruning "
                          "curve keeps a larger budget from always winning: use --reward_metric acc with "
                          "--reward_proxy steps or bn")
    curve = load_pruning_curve(baseline_dir)
    sparse_path = args.initial_ckpt or curve.sources[-1]
    cli.print_args(args, script)
    cli.check_writable(run_dir)
    log(curve.describe() + f" from {baseline_dir}")
    t_run = time.perf_counter()
    setup, current, _ = prepare(args, sparse_path)
    start_masks = weight_masks(current)  # what every iteration's regrowth is measured from
    kind = kind_cls(setup)
    iter_log = os.path.join(run_dir, "iterations.jsonl")
    steps = mini_finetune_steps(args, len(setup.data.train))
    budget_options = torch.linspace(args.min_budget_frac, args.max_budget_frac, args.budget_space_size).tolist()

    start_iter, done = 0, completed_iterations(run_dir)
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
        prev_ckpt = load_checkpoint(prev)
        load_state_into(current, {k: v.to(setup.device) for k, v in prev_ckpt["state_dict"].items()})
        setup.compute = ComputeLedger.starting_from(prev_ckpt, prev)  # its FLOPs include every earlier iteration's
        log(f"continuing after iteration {start_iter - 1}: {prev}")
    rows = [r for r in read_jsonl(iter_log) if r["iteration"] < start_iter]
    if start_iter == 0:
        sp0 = kind.sparsity(current)
        v0, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        t0, _ = evaluate(current, setup.data.test, setup.device, setup.precision)
        rows = [{"iteration": -1, "sparsity": sp0, "val_acc": v0, "test_acc": t0, "baseline_val_acc": curve(sp0),
                 "path": sparse_path}]
    write_jsonl(iter_log, rows)
    wandb = WandbLog(args.wandb, "bridge_" + kind.stage_prefix + "_iterative",
                     f"{args.m_name}_{args.start_sparsity or 'start'}", vars(args))
    work = work_model_like(setup, current.state_dict())

    for it in range(start_iter, args.num_iters):
        sp = kind.sparsity(current)
        if sp <= args.target_sparsity + 1e-3:
            log(f"sparsity {sp:.4f} reached the target {args.target_sparsity}")
            break
        cur_val, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        log(f"==== iteration {it}: {kind.describe(current)} | val {cur_val:.2f} | pruning curve there "
            f"{curve(sp):.2f} (gap {cur_val - curve(sp):+.2f} pp)")
        space = kind.search_space(current)
        if sum(space.capacities.values()) == 0:
            log("everything pruned in the search space is restored; stopping")
            break
        reference = calibrated_reference(setup, current, curve, cur_val)
        env = RegrowthEnv(work, clone_state(current), kind.regrower(space, current), setup.reward_train,
                          setup.reward_val, setup.device, setup.precision, reward_proxy(args, steps), reference,
                          args.budget_bonus, kind.total(), args.seed + it, macs=setup.macs)
        reinforce = (make_reinforce(args, args.alloc_space_size, args.budget_space_size, rl_options["advantage"],
                                    rl_options["clip"]) if args.allocator == "rl" else None)
        cfg = _search_config(args, space, budget_options=budget_options, position="iterative",
                             guard=kind.guard_layer(space),
                             top_up=kind.top_up_order(space, current) if rl_options.get("top_up") else None)
        cfg.seed = args.seed + it
        it_dir = os.path.join(run_dir, f"iter_{it}")
        resume_search = args.resume and os.path.isfile(os.path.join(it_dir, "search_state.pth"))
        t_it = time.perf_counter()
        outcome = run_search(env, space.names, space.ssim, space.capacities, cfg, reinforce, it_dir, resume_search,
                             on_episode=lambda e, r: wandb.log({"iteration": it, "episode": e + 1, "reward": r.reward}),
                             tag=f"iter {it} {args.allocator}")
        setup.compute.add("search", search_flops(outcome.rows))
        best = ensure_best_states(env, outcome)
        load_state_into(current, {k: v.to(setup.device) for k, v in best.post_state.items()})
        new_sp = kind.sparsity(current)
        val_acc, _ = evaluate(current, setup.data.val, setup.device, setup.precision)
        test_acc, _ = evaluate(current, setup.data.test, setup.device, setup.precision)
        path = save_model(os.path.join(it_dir, "best_grown_model.pth"), current, setup,
                          f"{kind.stage_prefix}_iterative_iter",
                          {"val_acc": val_acc, "test_acc": test_acc, "baseline_val_acc": curve(new_sp)}, kind,
                          iteration=it, allocation=best.allocation, reward=best.reward,
                          budget_frac=outcome.best_row().get("budget_frac"))
        write_search_outputs(it_dir, outcome.rows, space, best.allocation,
                             f"{args.m_name} iteration {it} ({args.allocator})")
        row = {"iteration": it, "sparsity": new_sp, "val_acc": val_acc, "test_acc": test_acc,
               "baseline_val_acc": curve(new_sp), "delta_baseline_pp": val_acc - curve(new_sp),
               "regrown": best.regrown, "best_reward": best.reward, "episodes": outcome.episodes,
               "stop_reason": outcome.stop_reason, "search_units": len(space.names),
               "seconds": time.perf_counter() - t_it, "allocation": best.allocation, "path": path}
        append_jsonl(iter_log, row)
        rows.append(row)
        log(f"==== iteration {it} done: sparsity {sp:.4f} -> {new_sp:.4f} | val {val_acc:.2f} (curve "
            f"{curve(new_sp):.2f}, {val_acc - curve(new_sp):+.2f} pp) | test {test_acc:.2f} | {row['seconds']:.0f} s "
            f"| {path}")
        if new_sp <= args.target_sparsity + 1e-3:
            log(f"target sparsity {args.target_sparsity} reached")
            break

    final_val, final_test = rows[-1]["val_acc"], rows[-1]["test_acc"]
    final_path = None
    ft_steps = final_finetune_steps(args, len(setup.data.train))
    if ft_steps:
        regrown = regrown_since(start_masks, current)  # union of all iterations' regrown weights
        final_val, final_test, _ = final_finetune(setup, current, regrown, ft_steps,
                                                  evals_path=os.path.join(run_dir, "final_finetune_evals.jsonl"))
        final_path = save_model(os.path.join(run_dir, "final_finetuned.pth"), current, setup,
                                f"{kind.stage_prefix}_iterative_final", {"val_acc": final_val, "test_acc": final_test},
                                kind)
    final_sp = kind.sparsity(current)
    summary = {"model": args.m_name, "kind": kind.unit_label, "start_ckpt": sparse_path, "baseline_dir": baseline_dir,
               "iterations": rows, "final_sparsity": final_sp, "final_val_acc": final_val, "final_test_acc": final_test,
               "final_checkpoint": final_path, "mini_finetune_steps": steps, "final_finetune_steps": ft_steps,
               "training_flops": setup.compute.record(),
               "run_seconds": time.perf_counter() - t_run, "final_description": kind.describe(current),
               "seed": args.seed, "args": jsonable(args)}
    write_json(os.path.join(run_dir, "summary.json"), summary)
    with open(os.path.join(run_dir, "search_summary.txt") if dist.is_main() else os.devnull, "w") as fh:
        fh.write(f"model: {args.m_name}\nstart: {sparse_path}\npruning curve: {baseline_dir} ({curve.metric})\n")
        fh.write(f"{'iter':>4} {'sparsity':>9} {'val acc':>8} {'curve':>8} {'delta pp':>9} {'test acc':>9}\n")
        for r in rows:
            fh.write(f"{r['iteration']:>4} {r['sparsity']:>9.4f} {r['val_acc']:>8.2f} {r['baseline_val_acc']:>8.2f} "
                     f"{r['val_acc'] - r['baseline_val_acc']:>+9.2f} {r['test_acc']:>9.2f}\n")
        fh.write(f"final: sparsity {final_sp:.4f}, val {final_val:.2f}, test {final_test:.2f}\n")
    png = plot_accuracy_vs_sparsity({"pruning curve (val)": curve.points},
                                    os.path.join(run_dir, "trajectory.png"),
                                    f"{args.m_name} iterative {kind.unit_label} regrowth",
                                    points={"regrowth iterations (val)": [(r["sparsity"], r["val_acc"]) for r in rows]},
                                    arrows=[((a["sparsity"], a["val_acc"]), (b["sparsity"], b["val_acc"]))
                                            for a, b in zip(rows, rows[1:])])
    wandb.finish()
    log(f"final: sparsity {final_sp:.4f} | val {final_val:.2f} | test {final_test:.2f}")
    log(f"wrote {run_dir}/iter_*/best_grown_model.pth, {os.path.join(run_dir, 'search_summary.txt')}, {png}")
    return summary
