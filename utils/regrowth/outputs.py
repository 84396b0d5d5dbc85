"""What a regrowth run writes besides its logs: checkpoints with their training FLOPs, search plots, and
the summary.json that report.py reads back through RunSummary."""
import json
import math
import os
from dataclasses import dataclass, field

from utils import distributed as dist
from utils.checkpoints import save_checkpoint
from utils.compute import flops_total
from utils.plots import plot_accuracy_vs_sparsity, plot_allocation, plot_search_curves
from utils.records import write_json

SUMMARY_FILE = "summary.json"


@dataclass
class RunSummary:
    """The result of one regrowth run as the reports compare it, read from its summary.json (which also holds
    the search's details: allocation, SSIM, timings). One-shot and iterative runs write different layouts
    (the start model is the sparse model, or iteration -1); older files lack some keys."""

    type: str                 # oneshot | iterative
    model: str
    kind: str                 # weights | filters
    start_sparsity: float
    start_val_acc: float
    start_test_acc: float
    final_sparsity: float
    val_acc: float            # after the final finetune (if any)
    test_acc: float
    steps: int                # regrowth steps: 1, or the iterations run
    allocator: str
    selection: str
    finetune_steps: object    # the final finetune's steps (None where not recorded)
    training_flops: float     # from the dense model, every stage included (nan where not recorded)
    seed: object
    start_ckpt: str
    reward_proxy: str
    mini_finetune_steps: object
    episodes: object          # one-shot: episodes the search ran
    args: dict = field(default_factory=dict)  # the run's recorded arguments
    path: str = None

    @classmethod
    def from_dict(cls, s, path=None, recorded=None):
        """`recorded`: the run's recorded arguments (or a function returning them) for files that hold none."""
        args = s.get("args") or (recorded() if callable(recorded) else recorded) or {}
        if "iterations" in s:
            start, kind, steps = s["iterations"][0], "iterative", len(s["iterations"]) - 1
            start_sp, start_val, start_test = start["sparsity"], start["val_acc"], start["test_acc"]
        else:
            kind, steps = "oneshot", 1
            start_sp, start_val, start_test = s["start_sparsity"], s["sparse_val_acc"], s["sparse_test_acc"]
        return cls(
            type=kind, model=s.get("model"), kind=s.get("kind", "weights"), start_sparsity=start_sp,
            start_val_acc=start_val, start_test_acc=start_test, final_sparsity=s["final_sparsity"],
            val_acc=s["final_val_acc"], test_acc=s["final_test_acc"], steps=steps,
            allocator=s.get("allocator") or args.get("allocator", "rl"),
            selection=s.get("selection", args.get("selection", "saliency")),
            finetune_steps=s.get("final_finetune_steps", args.get("finetune_epochs")),
            training_flops=flops_total(s.get("training_flops"), math.nan), seed=s.get("seed", args.get("seed")),
            start_ckpt=s.get("start_ckpt"), reward_proxy=s.get("reward_proxy") or args.get("reward_proxy") or "steps",
            mini_finetune_steps=s.get("mini_finetune_steps") or args.get("mini_finetune_steps"),
            episodes=s.get("episodes"), args=args, path=path)

    @classmethod
    def load(cls, path, recorded=None):
        """The summary at `path` (see from_dict)."""
        with open(path) as fh:
            return cls.from_dict(json.load(fh), path, recorded)


def write_summary(run_dir, summary):
    """summary.json of a run (a dict RunSummary.from_dict reads); returns its path."""
    return write_json(os.path.join(run_dir, SUMMARY_FILE), summary)


def save_model(path, model, setup, stage, metrics, kind, **extra):
    """A checkpoint of `model` with the run's training FLOPs so far (utils.compute)."""
    if setup.compute is not None:
        extra.setdefault("training_flops", setup.compute.record())
    return save_checkpoint(path, model, setup.hp.source.m_name, setup.data.spec.name, stage, setup.record, metrics,
                           sparsity=kind.sparsity(model), **extra)


def write_search_outputs(out_dir, rows, space, best_alloc, title):
    """Reward/entropy curves and the best allocation per unit as PNGs."""
    curves = plot_search_curves(rows, os.path.join(out_dir, "search_curves.png"), title)
    alloc = plot_allocation(space.names, best_alloc, space.capacities, space.ssim,
                            os.path.join(out_dir, "allocation.png"), title)
    return curves, alloc


def _text_file(path):
    """A text output written by the main process only (the others write to /dev/null)."""
    return open(path if dist.is_main() else os.devnull, "w")


def write_oneshot_text(out_dir, s, measured, metric, finetune_scope):
    """search_summary.txt of a one-shot run from its summary dict `s` (measured: what the best episode's proxy
    measured, as text; metric: the proxy's metric)."""
    flops = s["training_flops"]
    with _text_file(os.path.join(out_dir, "search_summary.txt")) as fh:
        fh.write(f"model: {s['model']}\nstart checkpoint: {s['start_ckpt']}\n"
                 f"sparsity: {s['start_sparsity']:.4f} -> {s['final_sparsity']:.4f} "
                 f"(regrew {s['regrown']:,} {s['kind']} of a budget of {s['budget']:,})\n"
                 f"sparse model val acc: {s['sparse_val_acc']:.2f}  test acc: {s['sparse_test_acc']:.2f}\n"
                 f"best episode: {s['best_episode']} of {s['episodes']} ({s['stop_reason']})\n"
                 f"reward proxy: {s['reward_proxy']} ({metric})\n"
                 f"best episode's {measured}\n"
                 f"best reward (proxy gain + budget bonus): {s['best_reward']:+.4f}\n"
                 f"final finetune: {s['final_finetune_steps']} steps ({s['final_finetune_schedule']} lr), scope "
                 f"{finetune_scope}\n"
                 f"training FLOPs from the dense model: {flops['total']:.4g} (this run {flops['spent']:.4g})\n"
                 f"final val acc: {s['final_val_acc']:.2f}  test acc: {s['final_test_acc']:.2f}\n"
                 f"search time: {s['search_seconds']:.0f} s ({s['search_seconds'] / 3600:.2f} h)\n"
                 f"best allocation: {s['best_allocation']}\n")


def write_iterative_text(run_dir, s, curve_metric):
    """search_summary.txt of an iterative run from its summary dict `s`: one line per iteration."""
    with _text_file(os.path.join(run_dir, "search_summary.txt")) as fh:
        fh.write(f"model: {s['model']}\nstart: {s['start_ckpt']}\n"
                 f"pruning curve: {s['baseline_dir']} ({curve_metric})\n")
        fh.write(f"{'iter':>4} {'sparsity':>9} {'val acc':>8} {'curve':>8} {'delta pp':>9} {'test acc':>9}\n")
        for r in s["iterations"]:
            fh.write(f"{r['iteration']:>4} {r['sparsity']:>9.4f} {r['val_acc']:>8.2f} {r['baseline_val_acc']:>8.2f} "
                     f"{r['val_acc'] - r['baseline_val_acc']:>+9.2f} {r['test_acc']:>9.2f}\n")
        fh.write(f"final: sparsity {s['final_sparsity']:.4f}, val {s['final_val_acc']:.2f}, "
                 f"test {s['final_test_acc']:.2f}\n")


def plot_trajectory(run_dir, curve, rows, title):
    """trajectory.png: the iterations' (sparsity, val acc) over the pruning curve, an arrow per step."""
    return plot_accuracy_vs_sparsity({"pruning curve (val)": curve.points}, os.path.join(run_dir, "trajectory.png"),
                                     title, points={"regrowth iterations (val)": [(r["sparsity"], r["val_acc"])
                                                                                  for r in rows]},
                                     arrows=[((a["sparsity"], a["val_acc"]), (b["sparsity"], b["val_acc"]))
                                             for a, b in zip(rows, rows[1:])])
