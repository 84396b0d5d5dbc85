"""The regrowth scripts' flags: the search, reward, controller and finetune options every regrowth script
shares (published defaults per script), the --fast preset, and their validation."""
from models import MODEL_NAMES, canonical_model_name
from utils import cli
from utils.allocators import ALLOCATORS
from utils.cache import default_cache_dir
from utils.errors import BridgeError, UnknownChoiceError
from utils.regrowth.proxies import LR_SCHEDULES, REWARD_METRICS, REWARD_PROXIES
from utils.regrowth.weights import INIT_ALIASES, INIT_STRATEGIES, canonical_init


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
        from utils.regrowth.filters import check_structured_init

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
