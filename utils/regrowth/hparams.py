"""The regrowth scripts' hyper-parameters (utils.hparams): search, controller, reward and final finetune,
declared with their flags and the published defaults per script; the --fast preset; the validation;
and RegrowthHparams, the one object the regrowth stages receive."""
from dataclasses import dataclass

from models import canonical_model_name
from utils import cli
from utils.allocators import ALLOCATORS
from utils.cache import default_cache_dir
from utils.controller import ReinforceConfig
from utils.errors import BridgeError, UnknownChoiceError
from utils.hparams import DataHparams, Hparams, ModelSource, RuntimeHparams, flag, record
from utils.regrowth.filters import SCORES, STRUCTURED_INITS, check_structured_init
from utils.regrowth.proxies import LR_SCHEDULES, REWARD_METRICS, REWARD_PROXIES
from utils.regrowth.weights import INIT_ALIASES, INIT_STRATEGIES, canonical_init

FINETUNE_SCHEDULES = ("cosine", "constant")
SELECTIONS = ("saliency", "magnitude", "gradient", "random")

# What --fast changes (README "Speed"): 150-step mini-finetunes with the learning rate annealed to 0
# (cosine), three of them per episode (different data orders, mean accuracy: one short run ranks
# allocations too noisily), a 2,000-image reward validation subset and a saliency pass over 100 batches.
# bench/proxy_fidelity.py measures how well its rewards rank allocations compared with a long finetune;
# 150 steps keep evaluation + regrowth under 5% of an episode (bench/episode_breakdown.py).
FAST_PRESET = {"mini_finetune_steps": 150, "mini_finetune_schedule": "cosine", "reward_repeats": 3,
               "reward_val_subset": 2000, "saliency_batches": 100}


@dataclass(frozen=True)
class SearchHparams(Hparams):
    """Which layers are searched, what comes back in them, and how the search runs."""

    group = "search"

    allocator: str = flag("rl", "rl: LSTM controller; random: random search; greedy / proportional / uniform: one "
                          "allocation", choices=ALLOCATORS)
    num_epochs: int = flag(400, "maximum number of search episodes", type=int)
    budget_bonus: float = flag(0.005, "reward weight of the budget usage", type=float)
    ssim_threshold: float = flag(0.0, "units with SSIM <= this are searched", type=float)
    ssim_num_batches: int = flag(64, "validation batches for SSIM", type=int)
    include_linear: bool = flag(False, "let Linear layers (no SSIM) join the search", action="store_true")
    init_strategy: str = flag("zero", "initial value of what is regrown (reference = the dense pretrained value)",
                              choices=INIT_STRATEGIES + tuple(INIT_ALIASES))
    saliency_batches: int = flag(None, "limit the saliency pass (default: one epoch)", type=int)
    selection: str = flag("saliency", "which pruned weights of a layer come back (unstructured): saliency (dL/dθ)²·θ² "
                          "on the dense model (published); magnitude: largest dense |w|; gradient: largest |dL/dθ| of "
                          "the sparse start model over the saliency batches (RigL's growth criterion); random",
                          choices=SELECTIONS)
    regrowth_score: str = flag("fisher", "filter regrowth: rank a group's pruned channels by fisher Σg²w² or taylor "
                               "Σ|g·w| on the dense model", choices=SCORES)
    fast: bool = flag(False, f"proxy-reward preset: {', '.join(f'--{k} {v}' for k, v in FAST_PRESET.items())} (each "
                      "only where not given explicitly); the published settings stay the default", action="store_true")
    cache_dir: str = flag(default_cache_dir(), "cache of saliency / SSIM results ('' disables; default "
                          "$BRIDGE_CACHE_DIR or .cache/bridge)")
    episodes_per_update: int = flag(1, "episodes sampled from one policy before each update; under torchrun they run "
                                    "in parallel (set it to --nproc_per_node)", type=int)
    resume: bool = flag(False, "continue an interrupted search", action="store_true")
    no_wandb: bool = flag(False, "accepted for compatibility; wandb is only used with --wandb", action="store_true")
    wandb: bool = flag(False, "also log episodes to Weights & Biases (imported lazily)", action="store_true")


@dataclass(frozen=True)
class ControllerHparams(Hparams):
    """The LSTM controller and its REINFORCE schedule (utils.controller)."""

    group = "controller"

    learning_rate: float = flag(3e-4, "controller Adam learning rate", type=float)
    hidden_size: int = flag(64, "LSTM controller hidden units", type=int)
    start_beta: float = flag(0.40, "entropy bonus weight β at the first episode", type=float)
    end_beta: float = flag(0.04, "entropy bonus weight β after the decay", type=float)
    decay_fraction: float = flag(0.4, "fraction of the episodes over which β decays linearly", type=float)
    reward_temperature: float = flag(0.005, "advantage scale τ (where used)", type=float)
    entropy_coef: float = flag(0.5, "accepted for compatibility (unused, as published)", type=float)
    early_stop_patience: int = flag(50, "stop the search after this many episodes without a better reward", type=int)
    min_epochs: int = flag(50, "episodes before the reward-std stop may end the search", type=int)
    reward_std_threshold: float = flag(0.002, "stop once the std of the last --reward_window_size rewards is below "
                                       "this", type=float)
    reward_window_size: int = flag(20, "rewards in the std window (also the iterative advantage scale)", type=int)

    def reinforce_config(self, num_episodes, advantage="temperature", clip=100.0):
        return ReinforceConfig(
            learning_rate=self.learning_rate, advantage=advantage, reward_temperature=self.reward_temperature,
            advantage_clip=clip, start_beta=self.start_beta, end_beta=self.end_beta,
            decay_fraction=self.decay_fraction, num_episodes=num_episodes, early_stop_patience=self.early_stop_patience,
            min_episodes=self.min_epochs, reward_std_threshold=self.reward_std_threshold,
            reward_window_size=self.reward_window_size)


@dataclass(frozen=True)
class RewardHparams(Hparams):
    """How an episode scores its regrown model (utils.regrowth.proxies)."""

    group = "reward"

    reward_proxy: str = flag("steps", "how an episode scores its regrown model: steps = the published mini-finetune "
                             "(below); bn = BatchNorm statistics re-estimated on --bn_batches training batches, no "
                             "weight update; saliency = the restored share of the search space's saliency, no pass at "
                             "all; gradient = the freed share of the start model's |dL/dθ| at pruned positions, one "
                             "pass per search (README Speed: cost and ranking quality of each)", choices=REWARD_PROXIES)
    reward_metric: str = flag("acc", "what the steps / bn proxies score: acc (published) or loss (reference loss - val "
                              "loss; one-shot only)", choices=REWARD_METRICS)
    bn_batches: int = flag(8, "bn proxy: training batches for the statistics", type=int)
    mini_finetune_epochs: float = flag(50, "per-episode finetune length in epochs (published {default})", type=float)
    mini_finetune_steps: int = flag(None, "per-episode finetune length in steps (overrides --mini_finetune_epochs)",
                                    type=int)
    mini_finetune_schedule: str = flag(None, "per-episode learning rate: constant (published) or cosine, annealed to 0 "
                                       "over the mini-finetune (default constant; --fast: see FAST_PRESET)",
                                       choices=LR_SCHEDULES)
    reward_repeats: int = flag(None, "mini-finetunes per episode, each with another data order; the reward uses their "
                               "mean accuracy (default 1, published; --fast: see FAST_PRESET)", type=int)
    reward_subset: int = flag(None, "mini-finetune on a fixed random subset of this many training images (default: "
                              "all)", type=int)
    reward_val_subset: int = flag(None, "score episodes on a fixed random subset of this many validation images "
                                  "(default: all)", type=int)

    def steps(self, steps_per_epoch):
        """The mini-finetune length in optimizer steps."""
        if self.mini_finetune_steps is not None:
            return self.mini_finetune_steps
        return max(1, int(round(self.mini_finetune_epochs * steps_per_epoch)))


@dataclass(frozen=True)
class FinetuneHparams(Hparams):
    """The final finetune of the best regrown model (utils.regrowth.final_finetune)."""

    group = "final finetune"

    finetune_epochs: float = flag(None, "finetune of the best result (0/none skips)", type=float)
    finetune_steps: int = flag(None, "finetune length in optimizer steps (instead of --finetune_epochs)", type=int)
    finetune_schedule: str = flag("cosine", "cosine: the published 5%% linear warm-up then cosine to 0; constant: the "
                                  "pruning stage's constant learning rate (one recipe for regrown and directly pruned "
                                  "models)", choices=FINETUNE_SCHEDULES)
    eval_every: int = flag(None, "evaluate the final finetune (and keep its best state) every this many steps instead "
                           "of every epoch; the evaluations go to final_finetune_evals.jsonl", type=int)
    finetune_scope: str = flag("all", "all: every weight trains; regrown: only the regrown weights change",
                               choices=("all", "regrown"))
    finetune_lr: float = flag(3e-4, "AdamW learning rate of the final finetune", type=float)

    def steps(self, steps_per_epoch):
        """--finetune_steps, else --finetune_epochs (None or 0: no finetune) in steps."""
        if self.finetune_steps is not None:
            return max(0, int(self.finetune_steps))
        epochs = self.finetune_epochs or 0
        return max(1, int(round(epochs * steps_per_epoch))) if epochs > 0 else 0


@dataclass(frozen=True)
class PolicyShape:
    """What differs between the scripts' controllers: the action space and the REINFORCE advantage clip,
    where the search sits (one-shot or an iteration: the order the controller sees the layers), and
    whether the unused budget is handed out after the controller (fill-budget order)."""

    action_space_size: int
    clip: float = 100.0
    advantage: str = "temperature"
    position: str = "oneshot"
    top_up: bool = False


@dataclass(frozen=True)
class RegrowthHparams:
    """Everything a regrowth stage is configured by."""

    source: ModelSource
    data: DataHparams
    runtime: RuntimeHparams
    search: SearchHparams
    controller: ControllerHparams
    reward: RewardHparams
    finetune: FinetuneHparams

    GROUPS = ("source", "data", "runtime", "search", "controller", "reward", "finetune")

    @staticmethod
    def add_args(p, *, m_name="effnet", num_epochs=400, patience=50, ssim_num_batches=64, save_dir, mini_epochs=50,
                 structured=False):
        """Every regrowth script's flags, with its published defaults; --save_dir and --tag name the output.
        Filter regrowth (structured) restores dense filter values by default, takes no budget bonus, has no
        weight init other than the dense values and adds --regrowth_score."""
        if structured:
            init_default, init_choices, budget_bonus = "reference", STRUCTURED_INITS + ("magnitude",), 0.0
        else:
            init_default, init_choices, budget_bonus = "zero", INIT_STRATEGIES + tuple(INIT_ALIASES), 0.005
        ModelSource.add_args(p, defaults={"m_name": m_name})
        p.add_argument("--save_dir", default=save_dir, help="where the regrowth outputs go")
        p.add_argument("--tag", default="", help="suffix for the output folder (e.g. a seed or an experiment name)")
        SearchHparams.add_args(p, omit=() if structured else ("regrowth_score",),
                               defaults={"num_epochs": num_epochs, "ssim_num_batches": ssim_num_batches,
                                         "init_strategy": init_default, "budget_bonus": budget_bonus},
                               choices={"init_strategy": init_choices})
        ControllerHparams.add_args(p, defaults={"early_stop_patience": patience})
        RewardHparams.add_args(p, defaults={"mini_finetune_epochs": mini_epochs})
        FinetuneHparams.add_args(p)
        DataHparams.add_args(p)
        RuntimeHparams.add_args(p)

    @classmethod
    def from_args(cls, args, structured=False):
        """The validated hyper-parameters of parsed regrowth flags (--fast filled in, names canonical)."""
        source = ModelSource.from_args(args)
        hp = cls(source.replace(m_name=canonical_model_name(source.m_name)), DataHparams.from_args(args),
                 RuntimeHparams.from_args(args), SearchHparams.from_args(args), ControllerHparams.from_args(args),
                 RewardHparams.from_args(args), FinetuneHparams.from_args(args))
        return hp.resolved(structured)

    def replace(self, **groups):
        return RegrowthHparams(**{g: groups.get(g, getattr(self, g)) for g in self.GROUPS})

    def record(self, args):
        """The run's arguments as printed and recorded: the parsed flags with the resolved values over them."""
        return record(args, *(getattr(self, g) for g in self.GROUPS))

    def resolved(self, structured=False):
        """Defaults that depend on --fast filled in; every combination of flags that cannot work refused."""
        search, reward, finetune = self.search, self.reward, self.finetune
        if search.fast:
            fill = {k: v for k, v in FAST_PRESET.items() if getattr(reward if k != "saliency_batches" else search, k)
                    is None}
            search = search.replace(**{k: v for k, v in fill.items() if k == "saliency_batches"})
            reward = reward.replace(**{k: v for k, v in fill.items() if k != "saliency_batches"})
        reward = reward.replace(mini_finetune_schedule=reward.mini_finetune_schedule or "constant",
                                reward_repeats=1 if reward.reward_repeats is None else reward.reward_repeats)
        if reward.reward_repeats < 1:
            raise BridgeError("--reward_repeats must be at least 1")
        if reward.reward_proxy not in REWARD_PROXIES:
            raise UnknownChoiceError("reward proxy", reward.reward_proxy, REWARD_PROXIES)
        if reward.reward_proxy == "bn" and reward.bn_batches < 1:
            raise BridgeError("--bn_batches must be at least 1")
        if structured:
            search = search.replace(init_strategy=check_structured_init(search.init_strategy))
        else:
            search = search.replace(init_strategy=canonical_init(search.init_strategy))
            if reward.reward_proxy == "bn" and search.init_strategy == "zero":
                raise BridgeError("--reward_proxy bn cannot tell allocations apart with --init_strategy zero: weights "
                                  "regrown at 0 leave the model's function unchanged; use an init that changes it "
                                  "(reference, kaiming, xavier) or another proxy")
        if search.allocator not in ALLOCATORS:
            raise UnknownChoiceError("allocator", search.allocator, ALLOCATORS)
        if search.num_epochs < 1:
            raise BridgeError("--num_epochs must be at least 1")
        if search.selection not in SELECTIONS:
            raise UnknownChoiceError("selection", search.selection, SELECTIONS)
        if search.selection != "saliency" and structured:
            raise BridgeError("--selection is for weight regrowth; filter regrowth ranks channels by --regrowth_score")
        if search.selection != "saliency" and reward.reward_proxy == "saliency":
            raise BridgeError(f"--reward_proxy saliency scores the saliency an allocation restores, but --selection "
                              f"{search.selection} does not restore by saliency; use another proxy or --selection "
                              "saliency")
        if finetune.finetune_steps is not None and finetune.finetune_epochs is not None:
            raise BridgeError("give --finetune_steps or --finetune_epochs, not both")
        if finetune.eval_every is not None and finetune.eval_every < 1:
            raise BridgeError(f"--eval_every must be at least 1 step, got {finetune.eval_every}")
        return self.replace(search=search, reward=reward)


@dataclass(frozen=True)
class IterativeHparams(Hparams):
    """The iterative regrowth loop: one search per iteration until the target sparsity."""

    method: str = flag("iterative", "output folder name under {save_dir}/{m_name}/")
    baseline_dir: str = flag(None, "folder of the pruning curve the reward compares with")
    initial_ckpt: str = flag(None, "sparse start model (default: the sparsest checkpoint of --baseline_dir)")
    start_sparsity: float = flag(None, "label only (the published run name)", type=float)
    target_sparsity: float = flag(0.9, "stop once the sparsity is at most this", type=float)
    num_iters: int = flag(10, "regrowth iterations (searches) at most", type=int)
    budget_space_size: int = flag(10, "budget options per iteration, evenly spaced from --min_budget_frac to "
                                  "--max_budget_frac", type=int)
    alloc_space_size: int = flag(10, "allocation ratio options per layer", type=int)
    min_budget_frac: float = flag(0.001, "smallest per-iteration budget, a fraction of all prunable weights",
                                  type=float)
    max_budget_frac: float = flag(0.01, "largest per-iteration budget, a fraction of all prunable weights", type=float)
    resume_iter: int = flag(None, "restart at this iteration from iter_{k-1}/best_grown_model.pth (default with "
                            "--resume: after the last finished iteration)", type=int)

    def check(self, reward):
        """Refuse loop settings that cannot work, and reward settings the iterative search cannot use."""
        cli.check_fraction("--target_sparsity", self.target_sparsity)
        cli.check_fraction("--min_budget_frac", self.min_budget_frac, low_inclusive=False)
        cli.check_fraction("--max_budget_frac", self.max_budget_frac, low_inclusive=False)
        if self.min_budget_frac > self.max_budget_frac or self.budget_space_size < 1:
            raise BridgeError("need --min_budget_frac <= --max_budget_frac and --budget_space_size >= 1")
        if reward.reward_proxy in ("saliency", "gradient") or reward.reward_metric == "loss":
            raise BridgeError("the iterative search chooses the budget too, and only an accuracy set against the "
                              "pruning curve keeps a larger budget from always winning: use --reward_metric acc with "
                              "--reward_proxy steps or bn")

    @classmethod
    def add_args(cls, parser, *, budget_space_size, min_frac, max_frac, num_iters, target_sparsity,
                 alloc_space_size=10):
        return super().add_args(parser, defaults={
            "budget_space_size": budget_space_size, "min_budget_frac": min_frac, "max_budget_frac": max_frac,
            "num_iters": num_iters, "target_sparsity": target_sparsity, "alloc_space_size": alloc_space_size})
