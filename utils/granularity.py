"""Weights or filters: what one unit of pruning and regrowth is, as one object both stages use.

A granularity knows how a model is masked at it, how sparse a model is in its units, how a model is
described and labelled in tables and plots, which columns the pruning table holds, what a level costs
on a device (boundary estimation) and which regrowth script continues from a level. The pruning
stage (utils.pruning_run.PruningPlan), the regrowth kinds (utils.regrowth.kinds), the boundary
script and the evaluation script take it instead of branching on "structured".
"""
from utils.compact import export_compact
from utils.costs import layer_costs, model_cost
from utils.masks import add_masks, count_pruned_params, model_sparsity
from utils.structured import add_structured_masks, channel_sparsity, filter_counts, is_structured_model

COMMON_COLUMNS = ["val_acc", "test_acc", "val_acc_before_finetune"]


class WeightGranularity:
    """Unstructured: single weights of every prunable layer."""

    name = "weights"
    unit_label = "weights"
    sparsity_label = "weight sparsity"
    level_label = "sparsity"            # a pruning level in the logs
    axis_label = "sparsity (fraction of prunable weights removed)"
    pruning_folder_prefix = ""          # {work_dir}/{m_name}/{prefix}{mode}/
    regrowth_stage_prefix = "regrowth"  # checkpoint stages of the regrowth scripts
    pruning_columns = ["sparsity", *COMMON_COLUMNS, "target_sparsity", "pruner", "amount", "finetune_steps",
                       "training_flops", "seconds", "path"]

    def add_masks(self, model):
        return add_masks(model)

    def sparsity(self, model):
        return model_sparsity(model)

    def total(self, model):
        """How many units the model has (prunable weights)."""
        return count_pruned_params(model)[0]

    def describe(self, model):
        total, surviving, _ = count_pruned_params(model)
        return f"weight sparsity {model_sparsity(model):.4f} ({surviving:,} of {total:,} weights alive)"

    def evaluation_costs(self, model, input_size):
        """What the evaluation table adds for this granularity (dense kernels: nothing beyond the masked costs)."""
        return {}

    def device_costs(self, model, input_size, latency=None):
        """The MACs a level costs on a device: non-zero MACs, and the most MACs one regrown weight can add.
        (Latency is not measured: a weight-sparse model runs dense kernels.)"""
        costs = layer_costs(model, input_size)
        return {"macs": sum(c.nonzero_macs for c in costs),
                "max_macs_per_weight": max(c.macs // max(c.params, 1) for c in costs)}

    def regrowth_command(self, m_name, start, fraction):
        return (f"python regrowth_oneshot.py --m_name {m_name} --initial_ckpt {start['path']} "
                f"--model_sparsity {round(start['sparsity'], 4)} --regrow_step {fraction:.5f}")


class FilterGranularity:
    """Structured: whole output channels (filters) of conv layers, coupled channels as one group."""

    name = "filters"
    unit_label = "filters"
    sparsity_label = "channel sparsity"
    level_label = "channel sparsity"
    axis_label = "channel sparsity (fraction of conv filters removed)"
    pruning_folder_prefix = "structured_"
    regrowth_stage_prefix = "regrowth_structured"
    pruning_columns = ["sparsity", "weight_sparsity", "param_ratio", "mac_ratio", *COMMON_COLUMNS, "compact_params",
                       "compact_macs", "compact_max_abs_diff", "pruner", "finetune_steps", "seconds", "path"]

    def add_masks(self, model):
        return add_structured_masks(model)

    def sparsity(self, model):
        return channel_sparsity(model)

    def total(self, model):
        """How many units the model has (conv filters)."""
        return filter_counts(model)[1]

    def describe(self, model):
        pruned, total = filter_counts(model)
        return f"channel sparsity {channel_sparsity(model):.4f} ({total - pruned:,} of {total:,} filters alive)"

    def evaluation_costs(self, model, input_size):
        """The MACs of the compact model (the filters physically removed)."""
        return {"compact_macs": model_cost(export_compact(model, input_size), input_size)["macs"]}

    def device_costs(self, model, input_size, latency=None):
        """The compact model's MACs, the alive filters and, with `latency` (a function (plain model, input size) ->
        utils.compact.Latency, see utils.export.latency_meter), the compact model's median latency and its IQR."""
        compact = export_compact(model, input_size)
        pruned, total = filter_counts(model)
        row = {"macs": model_cost(compact, input_size)["macs"], "alive_filters": total - pruned}
        if latency is not None:
            measured = latency(compact, input_size)
            row["latency_ms"], row["latency_iqr_ms"] = measured.median_ms, measured.iqr_ms
        return row

    def regrowth_command(self, m_name, start, fraction):
        return (f"python regrowth_structure_oneshot.py --m_name {m_name} --initial_ckpt {start['path']} "
                f"--sparsity_delta {fraction:.4f}")


WEIGHTS = WeightGranularity()
FILTERS = FilterGranularity()


def granularity_of_model(model):
    """FILTERS for a model with channel masks, else WEIGHTS."""
    return FILTERS if is_structured_model(model) else WEIGHTS


def granularity_of_stage(stage):
    """FILTERS for a checkpoint written by a structured stage (its `stage` names it), else WEIGHTS."""
    return FILTERS if "structured" in str(stage or "") else WEIGHTS
