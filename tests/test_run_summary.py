"""RunSummary reads both summary layouts the regrowth stages write, and older files without recorded args."""
import json
import math

from utils.regrowth.outputs import SUMMARY_FILE, RunSummary, write_summary

ONESHOT = {"model": "resnet20", "kind": "filters", "start_sparsity": 0.7, "sparse_val_acc": 80.0,
           "sparse_test_acc": 79.0, "final_sparsity": 0.69, "final_val_acc": 82.0, "final_test_acc": 81.5,
           "allocator": "uniform", "selection": "saliency", "final_finetune_steps": 30, "seed": 3,
           "training_flops": {"total": 1e12}, "start_ckpt": "a.pth", "reward_proxy": "bn (8 batches)",
           "mini_finetune_steps": 5, "episodes": 4, "args": {"init_strategy": "reference", "fast": True}}
ITERATIVE = {"model": "resnet20", "iterations": [{"iteration": -1, "sparsity": 0.98, "val_acc": 60.0, "test_acc": 59.0},
                                                 {"iteration": 0, "sparsity": 0.975, "val_acc": 65.0, "test_acc": 64.0},
                                                 {"iteration": 1, "sparsity": 0.97, "val_acc": 66.0, "test_acc": 65.0}],
             "final_sparsity": 0.97, "final_val_acc": 67.0, "final_test_acc": 66.5, "final_finetune_steps": 0,
             "seed": 1, "start_ckpt": "b.pth", "mini_finetune_steps": 7}


def test_oneshot_layout(tmp_path):
    path = write_summary(str(tmp_path), ONESHOT)
    assert path.endswith(SUMMARY_FILE)
    run = RunSummary.load(path, lambda: (_ for _ in ()).throw(AssertionError("args are recorded: not called")))
    assert (run.type, run.kind, run.steps) == ("oneshot", "filters", 1)
    assert (run.start_sparsity, run.start_val_acc, run.start_test_acc) == (0.7, 80.0, 79.0)
    assert (run.final_sparsity, run.val_acc, run.test_acc) == (0.69, 82.0, 81.5)
    assert (run.allocator, run.finetune_steps, run.training_flops, run.seed) == ("uniform", 30, 1e12, 3)
    assert (run.reward_proxy, run.episodes, run.args["init_strategy"]) == ("bn (8 batches)", 4, "reference")


def test_iterative_layout_and_an_older_file_without_args(tmp_path):
    path = tmp_path / SUMMARY_FILE
    path.write_text(json.dumps(ITERATIVE))
    run = RunSummary.load(str(path), lambda: {"allocator": "random", "seed": 9})
    assert (run.type, run.kind, run.steps) == ("iterative", "weights", 2)  # iteration -1 is the start
    assert (run.start_sparsity, run.start_val_acc, run.start_test_acc) == (0.98, 60.0, 59.0)
    assert (run.val_acc, run.test_acc, run.final_sparsity) == (67.0, 66.5, 0.97)
    assert run.allocator == "random" and run.seed == 1  # the file's seed wins over the recorded one
    assert math.isnan(run.training_flops) and run.reward_proxy == "steps" and run.mini_finetune_steps == 7
