"""Training compute in FLOPs, counted the way dynamic-sparse-training papers count it (RigL, Evci et al. 2020).

    FLOPs of a pass = 2 (one multiply-accumulate is two FLOPs) x the non-zero MACs of one image through
                      the model as it is during the pass x images x (3 for a training pass: forward +
                      backward ~ 3 forwards; 1 for a forward-only pass)

Non-zero MACs: the prunable layers (Conv2d / Linear) only, a weight counting while its mask keeps it
(utils.costs leaves BatchNorm, activations and pooling out: a few percent of a CNN).

What a result records (`training_flops` in its checkpoint and summary) is everything spent after
pretraining to produce it, from the dense checkpoint on: the FLOPs its own stage spent plus what its
start checkpoint recorded. A stage counts every pass over training images (finetunes, mini-finetunes,
saliency and gradient passes, BatchNorm re-estimation), the SSIM passes (dense and sparse model, forward
only), and the validation passes that score a search's episodes. Evaluations that only select or report
a model are not counted (every arm makes the same ones), nor is the sorting that pruning does.
Pretraining's own compute is recorded apart (`pretrain_flops` in the dense checkpoint).
"""
import math
from dataclasses import dataclass, field

from utils.costs import output_positions
from utils.masks import has_mask, prunable_modules

FLOPS_PER_MAC = 2
TRAINING_PASS = 3   # forward + backward, in forwards
FORWARD_PASS = 1


def pass_flops(macs_per_image, images, backward):
    """FLOPs of `images` images through a model of `macs_per_image` non-zero MACs (see module docstring)."""
    return float(FLOPS_PER_MAC * macs_per_image * images * (TRAINING_PASS if backward else FORWARD_PASS))


def alive_weights(module):
    """Weights a sparse kernel would multiply: the mask's ones for a masked layer, else the non-zeros."""
    if has_mask(module):
        return module.weight_mask.count_nonzero()
    return module.weight.count_nonzero()


class MacCounter:
    """Non-zero MACs of one image through models of one architecture, cheaply: the output positions of
    every layer are measured once (one forward), each call then counts alive weights (no forward)."""

    def __init__(self, model, input_size):
        device = next(model.parameters()).device
        self.positions = output_positions(model, input_size, device)

    def __call__(self, model):
        counts = [(self.positions.get(n, 0), alive_weights(m)) for n, m in prunable_modules(model)]
        return int(sum(p * int(c) for p, c in counts))


def images_in_batches(loader, max_batches=None):
    """Images a pass over the first `max_batches` batches of `loader` sees (all of them when None)."""
    if isinstance(loader, (list, tuple)):  # a fixed list of (x, y) batches
        return sum(len(y) for _, y in loader[:max_batches])
    n = loader.num_samples() if hasattr(loader, "num_samples") else len(loader.dataset)
    batch = loader.batch_size
    batches = len(loader) if max_batches is None else min(len(loader), int(max_batches))
    if getattr(loader, "drop_last", False):
        return batches * batch
    return min(batches * batch, n)


@dataclass
class ComputeLedger:
    """FLOPs spent by one run, per stage, on top of what its start checkpoint recorded."""

    inherited: float = 0.0          # the start checkpoint's training_flops total
    inherited_from: str = None
    stages: dict = field(default_factory=dict)

    def add(self, stage, flops):
        self.stages[stage] = self.stages.get(stage, 0.0) + float(flops)
        return float(flops)

    def add_pass(self, stage, macs_per_image, images, backward):
        return self.add(stage, pass_flops(macs_per_image, images, backward))

    @property
    def spent(self):
        return float(sum(self.stages.values()))

    @property
    def total(self):
        return self.inherited + self.spent

    def record(self):
        """What checkpoints and summaries store under `training_flops`."""
        return {"total": self.total, "spent": self.spent, "inherited": self.inherited,
                "inherited_from": self.inherited_from, "stages": dict(self.stages)}

    @classmethod
    def starting_from(cls, ckpt, path=None):
        """A ledger continuing the FLOPs recorded in `ckpt` (a loaded checkpoint dict; 0 for a dense one)."""
        return cls(recorded_flops(ckpt), path)


def flops_total(record, missing=0.0):
    """The total of a `training_flops` record: a dict in checkpoints and summaries, a number in log rows;
    `missing` when there is none (0 to inherit from a dense or older checkpoint, nan to show '-' in a table)."""
    if isinstance(record, dict):
        return float(record.get("total", missing))
    return float(record) if record is not None else float(missing)


def recorded_flops(ckpt):
    """The training FLOPs total a checkpoint dict records (0 when it records none: dense or older files)."""
    return flops_total((ckpt or {}).get("training_flops"))


def format_mean_flops(values):
    """The mean of the known FLOPs totals in `values` (nan = unknown), '3.21e+15' style; '-' when none is known."""
    known = [v for v in values if not math.isnan(v)]
    return f"{sum(known) / len(known):.3g}" if known else "-"
