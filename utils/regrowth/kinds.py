"""What regrowth searches over: single weights of layers, or filters of channel groups.

A *kind* turns a sparse model into a search space (units in priority order, their SSIM, capacity and
granularity) and builds the regrower that restores an allocation. The search, rewards, outputs and
finetuning (utils/regrowth/) are the same for both kinds.

* UnstructuredKind: a unit is a masked Conv2d/Linear layer; capacity = its pruned weights; saliency
  (dL/dθ)²·θ² per weight, computed on the dense model for the layers a search needs (cached).
* StructuredKind: a unit is a channel group (utils/structured.py); SSIM = the lowest SSIM of its
  convs; capacity = pruned channels x filters per channel, allocated in whole channels; channel score
  fisher / taylor on the dense model. Like the published one-shot script, a search space whose
  capacity is below the budget is topped up with the next groups in ascending SSIM.
"""
import time
import zlib
from dataclasses import dataclass

import torch

from utils.cache import cache_key, compute_context, state_digest
from utils.compute import images_in_batches
from utils.errors import BridgeError, UnknownChoiceError
from utils.granularity import FILTERS, WEIGHTS
from utils.progress import log
from utils.regrowth.filters import FilterRegrower, group_capacities, group_saliency, group_ssim
from utils.regrowth.weights import WeightRegrower, dense_reference_weights, layer_capacities
from utils.runtime import Precision
from utils.saliency import layer_mean_saliency, weight_gradient, weight_saliency
from utils.ssim import format_ssim_table, layer_ssim, select_search_space
from utils.structured import channel_groups


def random_selection_generator(seed, layer):
    """The generator of --selection random's scores for one layer: the same draws whatever else is searched."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(layer.encode()))


@dataclass
class SearchSpace:
    names: list          # units in search order (ascending SSIM)
    ssim: dict           # unit -> SSIM
    capacities: dict     # unit -> capacity in budget units (weights or filters)
    units: dict = None   # unit -> granularity (filters per channel), None for single weights
    fallback: bool = False


def _pass_precision(setup):
    """SSIM, saliency and channel scores run in fp32 (in the run's memory layout) whatever --precision is."""
    return Precision(None, setup.precision.channels_last)


def _conv_ssim(setup, model, names):
    """SSIM per conv layer (dense vs `model`), cached by both models' contents, the data and where it ran."""
    t0 = time.perf_counter()
    images = images_in_batches(setup.data.val, setup.hp.search.ssim_num_batches)
    setup.charge("ssim", setup.dense, images, backward=False)  # counted whether or not the cache answers
    setup.charge("ssim", model, images, backward=False)

    def compute():
        return layer_ssim(setup.dense, model, setup.data.val, setup.device, names, setup.hp.search.ssim_num_batches,
                          _pass_precision(setup))

    if not setup.cache or not setup.cache.folder:
        return compute(), time.perf_counter() - t0
    key = cache_key("ssim", dense=setup.dense_digest, sparse=state_digest(model.state_dict()), layers=names,
                    batches=setup.hp.search.ssim_num_batches, data=setup.data_key(),
                    context=compute_context(setup.device, _pass_precision(setup)))
    return setup.cache.get_or_compute(key, compute, "SSIM"), time.perf_counter() - t0


def _cached(setup, kind, names, compute, **extra):
    """A dense-model computation over `names` (run in _pass_precision), cached by the dense model, the data,
    the arguments and where it ran."""
    if not setup.cache or not setup.cache.folder:
        return compute()
    key = cache_key(kind, dense=setup.dense_digest, layers=names, batches=setup.hp.search.saliency_batches,
                    data=setup.data_key(), context=compute_context(setup.device, _pass_precision(setup)), **extra)
    return setup.cache.get_or_compute(key, compute, kind)


def _dense_pass(setup, store, names, kind, compute, **extra):
    """Fill `store` with a dense-model pass over the `names` it lacks: charged as a backward pass over the
    saliency batches, cached (see _cached). Returns (missing names, seconds), ([], 0) when none is missing."""
    missing = [n for n in names if n not in store]
    if not missing:
        return [], 0.0
    t0 = time.perf_counter()
    setup.charge("saliency", setup.dense, images_in_batches(setup.data.train, setup.hp.search.saliency_batches),
                 backward=True)
    store.update(_cached(setup, kind, missing, lambda: compute(missing), **extra))
    return missing, time.perf_counter() - t0


class RegrowthKind:
    """What both kinds take from their granularity (utils.granularity): labels, unit count, sparsity."""

    granularity = None

    def __init__(self, setup):
        self.setup = setup

    @property
    def unit_label(self):
        return self.granularity.unit_label

    @property
    def stage_prefix(self):
        return self.granularity.regrowth_stage_prefix

    def total(self):
        """The dense model's units (weights or filters): what budgets are fractions of."""
        return self.granularity.total(self.setup.dense)

    def sparsity(self, model):
        return self.granularity.sparsity(model)

    def describe(self, model):
        return self.granularity.describe(model)


class UnstructuredKind(RegrowthKind):
    granularity = WEIGHTS

    def __init__(self, setup):
        super().__init__(setup)
        self._saliency = {}
        self._reference = None

    def search_space(self, model, top_up_to=None):
        search = self.setup.hp.search
        ssim, secs = _conv_ssim(self.setup, model, self.setup.masked_names)
        names, fallback = select_search_space(ssim, self.setup.masked_names, search.ssim_threshold, search.include_linear)
        caps_all = layer_capacities(model, self.setup.masked_names)
        names = [n for n in names if caps_all[n] > 0] or names
        log(f"SSIM (dense vs sparse, {search.ssim_num_batches} val batches, {secs:.1f} s):")
        log(format_ssim_table(ssim, self.setup.masked_names, names, caps_all))
        if fallback:
            log(f"no layer has SSIM <= {search.ssim_threshold}: searching only the lowest-SSIM layer {names[0]} "
                "(raise --ssim_threshold to search more layers)")
        return SearchSpace(names, ssim, {n: caps_all[n] for n in names}, None, fallback)

    def saliency(self, names):
        setup = self.setup
        missing, secs = _dense_pass(setup, self._saliency, names, "saliency", lambda missing: weight_saliency(
            setup.dense, setup.data.train, missing, setup.device, setup.hp.search.saliency_batches, _pass_precision(setup)))
        if missing:
            means = layer_mean_saliency({n: self._saliency[n] for n in missing})
            log(f"saliency (dL/dθ)²·θ² of {len(missing)} layer(s) on the dense model over "
                f"{setup.hp.search.saliency_batches or len(setup.data.train)} train batches: {secs:.1f} s;"
                " mean " + ", ".join(f"{n} {v:.2e}" for n, v in list(means.items())[:5])
                + (" ..." if len(means) > 5 else ""))
        return {n: self._saliency[n] for n in names}

    def pruned_gradient(self, model, names):
        """{layer: |dL/dθ| of `model` at its pruned positions, 0 where alive} over the saliency batches
        (the gradient reward proxy), cached by the model's content."""
        setup = self.setup
        t0 = time.perf_counter()
        setup.charge("gradient", model, images_in_batches(setup.data.train, setup.hp.search.saliency_batches),
                     backward=True)

        def compute():
            grads = weight_gradient(model, setup.data.train, names, setup.device, setup.hp.search.saliency_batches,
                                    _pass_precision(setup))
            modules = dict(model.named_modules())
            return {n: g * (modules[n].weight_mask.detach().cpu() == 0) for n, g in grads.items()}

        if setup.cache and setup.cache.folder:
            key = cache_key("pruned_gradient", sparse=state_digest(model.state_dict()), layers=names,
                            batches=setup.hp.search.saliency_batches, data=setup.data_key(),
                            context=compute_context(setup.device, _pass_precision(setup)))
            grads = setup.cache.get_or_compute(key, compute, "gradient")
        else:
            grads = compute()
        log(f"gradient |dL/dθ| of the start model at pruned positions of {len(names)} layer(s) over "
            f"{setup.hp.search.saliency_batches or len(setup.data.train)} train batches: {time.perf_counter() - t0:.1f} s")
        return grads

    def reference_weights(self):
        if self._reference is None:
            self._reference = dense_reference_weights(self.setup.dense, self.setup.masked_names)
        return self._reference

    def selection_scores(self, names, model=None):
        """{layer: score per weight}; regrowth restores the pruned positions with the highest (--selection):
        saliency on the dense model, dense |w| (magnitude), |dL/dθ| of `model`, the sparse start (gradient),
        or uniform random draws (random: one generator per layer, seeded by --seed and the layer's name)."""
        selection = self.setup.hp.search.selection
        if selection == "saliency":
            return self.saliency(names)
        if selection == "magnitude":
            ref = self.reference_weights()
            return {n: ref[n].abs() for n in names}
        if selection == "gradient":
            if model is None:
                raise BridgeError("--selection gradient needs the sparse model the regrowth starts from")
            return self.pruned_gradient(model, names)
        if selection == "random":
            ref = self.reference_weights()
            return {n: torch.rand(ref[n].shape, generator=random_selection_generator(self.setup.hp.runtime.seed, n))
                    for n in names}
        raise UnknownChoiceError("selection", selection, ("saliency", "magnitude", "gradient", "random"))

    def regrower(self, space, model=None):
        """The regrower of `space`; `model` (the sparse start) is needed by --selection gradient."""
        return WeightRegrower(self.selection_scores(space.names, model), self.reference_weights(),
                              self.setup.hp.search.init_strategy)

    def guard_layer(self, space):
        """The published iterative safeguard: the searchable layer with the largest mean saliency."""
        means = layer_mean_saliency(self.saliency(space.names))
        live = [n for n in space.names if space.capacities[n] > 0]
        return max(live, key=lambda n: means[n]) if live else None

    def top_up_order(self, space, model):
        """Where budget the controller left goes (only when asked, `--fill_budget`): the search layers in
        ascending SSIM order, most drifted first."""
        return list(space.names)


class StructuredKind(RegrowthKind):
    granularity = FILTERS

    def __init__(self, setup):
        super().__init__(setup)
        self.groups = channel_groups(setup.dense, setup.data.spec.image_size)
        self.by_root = {g.root: g for g in self.groups}
        self._scores = {}
        self._dense_state = None

    def search_space(self, model, top_up_to=None):
        search = self.setup.hp.search
        convs = list(dict.fromkeys(n for g in self.groups for n, _ in g.convs))
        conv_ssim, secs = _conv_ssim(self.setup, model, convs)
        ssim = group_ssim(conv_ssim, self.groups)
        roots = [g.root for g in self.groups]
        caps_all = group_capacities(model, self.groups)
        live = [r for r in roots if caps_all[r] > 0]
        names, fallback = select_search_space({r: ssim[r] for r in live if r in ssim}, live, search.ssim_threshold)
        if top_up_to is not None:
            rest = sorted((r for r in live if r not in names), key=lambda r: ssim.get(r, 1.0))
            while sum(caps_all[n] for n in names) < top_up_to and rest:
                names.append(rest.pop(0))
        log(f"SSIM per channel group (lowest over its convs; {search.ssim_num_batches} val batches, {secs:.1f} s):")
        width = max(len(r) for r in roots)
        for r in roots:
            g = self.by_root[r]
            mark = f"  <- search #{names.index(r) + 1}" if r in names else ""
            s = f"{ssim[r]:+.4f}" if r in ssim else "   -   "
            log(f"  {r:<{width}}  x{g.cost:<2} ssim {s}  pruned {caps_all[r] // g.cost:>5}/{g.size:<5}{mark}")
        if fallback:
            log(f"no group has SSIM <= {search.ssim_threshold}: searching the lowest-SSIM group(s) "
                "(raise --ssim_threshold to search more)")
        return SearchSpace(names, ssim, {n: caps_all[n] for n in names}, {n: self.by_root[n].cost for n in names},
                           fallback)

    def scores(self, names):
        setup = self.setup
        missing, secs = _dense_pass(setup, self._scores, names, "channel_scores", lambda missing: group_saliency(
            setup.dense, setup.data.train, [self.by_root[n] for n in missing], setup.device,
            setup.hp.search.regrowth_score, setup.hp.search.saliency_batches, _pass_precision(setup)),
            score=setup.hp.search.regrowth_score)
        if missing:
            log(f"channel scores ({setup.hp.search.regrowth_score}) of {len(missing)} group(s) on the dense model: "
                f"{secs:.1f} s")
        return {n: self._scores[n] for n in names}

    def regrower(self, space, model=None):
        if self._dense_state is None:
            from utils.masks import unmasked_state_dict

            self._dense_state = {k: v.detach().cpu() for k, v in unmasked_state_dict(self.setup.dense.state_dict()).items()}
        return FilterRegrower([self.by_root[n] for n in space.names], self.scores(space.names), self._dense_state,
                              self.setup.hp.search.init_strategy)

    def guard_layer(self, space):
        return None

    def top_up_order(self, space, model):
        """Groups ranked by the mean dense score of their pruned channels (the published greedy top-up)."""
        from utils.structured import alive_channels

        scores = self.scores(space.names)

        def mean_dead(n):
            dead = ~alive_channels(model, self.by_root[n])
            return float(scores[n][dead].mean()) if dead.any() else float("-inf")

        return sorted(space.names, key=mean_dead, reverse=True)
