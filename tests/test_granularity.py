"""Weights vs filters as one object: the counts, labels and device costs each granularity reports agree
with direct counts over the model's masks, and every stage picks the granularity of what it reads."""
import torch.nn as nn

from models import model_loader
from utils.compact import Latency, export_compact
from utils.costs import model_cost
from utils.export import latency_meter
from utils.granularity import FILTERS, WEIGHTS, granularity_of_model, granularity_of_stage
from utils.masks import masked_modules
from utils.pruners import weight_pruner_loader
from utils.structured_importance import prune_channels


def _weight_pruned(amount=0.6):
    model = WEIGHTS.add_masks(model_loader("resnet20"))
    weight_pruner_loader("glob")(model, amount)
    return model


def _filter_pruned(amount=0.5):
    model = FILTERS.add_masks(model_loader("resnet20"))
    prune_channels(model, 32, amount, "l1")
    return model


def test_weight_sparsity_and_description_count_the_masks():
    model = _weight_pruned()
    zeros = sum(int((m.weight_mask == 0).sum()) for _, m in masked_modules(model))
    total = sum(m.weight_mask.numel() for _, m in masked_modules(model))
    assert WEIGHTS.total(model) == total == WEIGHTS.total(model_loader("resnet20"))
    assert abs(WEIGHTS.sparsity(model) - zeros / total) < 1e-12
    assert f"{total - zeros:,} of {total:,} weights alive" in WEIGHTS.describe(model)
    assert granularity_of_model(model) is WEIGHTS


def test_filter_sparsity_and_description_count_whole_filters():
    model = _filter_pruned()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    dead = sum(int((m.weight_mask.reshape(m.out_channels, -1).amax(1) == 0).sum()) for m in convs)
    total = sum(m.out_channels for m in convs)
    assert FILTERS.total(model) == total == FILTERS.total(model_loader("resnet20"))
    assert dead > 0 and abs(FILTERS.sparsity(model) - dead / total) < 1e-12
    assert f"{total - dead:,} of {total:,} filters alive" in FILTERS.describe(model)
    assert granularity_of_model(model) is FILTERS


def test_device_costs_are_the_kernels_each_granularity_runs():
    size = 32
    sparse = _weight_pruned()
    costs = WEIGHTS.device_costs(sparse, size)
    dense_macs = model_cost(model_loader("resnet20"), size)["macs"]
    assert 0 < costs["macs"] < dense_macs and costs["macs"] == model_cost(sparse, size)["nonzero_macs"]
    assert costs["max_macs_per_weight"] == 32 * 32  # the first-stage convs: one MAC per output position
    calls = []

    def latency(model, input_size):  # records what is timed
        calls.append((model, input_size))
        return Latency(1.5, 0.25, 1, 3)

    assert "latency_ms" not in WEIGHTS.device_costs(sparse, size, latency) and not calls
    filters = _filter_pruned()
    row = FILTERS.device_costs(filters, size, latency)
    (timed, timed_size), = calls  # the compact model: fewer filters than the masked one
    assert timed_size == size and FILTERS.total(timed) < FILTERS.total(filters)
    assert (row["latency_ms"], row["latency_iqr_ms"]) == (1.5, 0.25)
    assert row["macs"] == model_cost(export_compact(filters, size), size)["macs"] < dense_macs
    assert row["alive_filters"] == FILTERS.total(filters) * (1 - FILTERS.sparsity(filters))
    assert FILTERS.device_costs(filters, size, latency_meter("torch", 1))["latency_ms"] > 0
    assert FILTERS.evaluation_costs(filters, size) == {"compact_macs": row["macs"]}
    assert WEIGHTS.evaluation_costs(sparse, size) == {}


def test_stage_names_and_labels():
    for stage in ("prune_structured_iterative", "regrowth_structured_oneshot_final"):
        assert granularity_of_stage(stage) is FILTERS
    for stage in ("prune_iterative", "regrowth_oneshot_final", None, ""):
        assert granularity_of_stage(stage) is WEIGHTS
    assert (WEIGHTS.regrowth_stage_prefix, FILTERS.regrowth_stage_prefix) == ("regrowth", "regrowth_structured")
    assert "channel_sparsity" not in WEIGHTS.pruning_columns and "compact_macs" in FILTERS.pruning_columns
    start = {"path": "a.pth", "sparsity": 0.987654}
    assert WEIGHTS.regrowth_command("resnet20", start, 0.00123).startswith("python regrowth_oneshot.py")
    assert "--model_sparsity 0.9877 --regrow_step 0.00123" in WEIGHTS.regrowth_command("resnet20", start, 0.00123)
    assert FILTERS.regrowth_command("vgg16", start, 0.0123).endswith("--initial_ckpt a.pth --sparsity_delta 0.0123")
