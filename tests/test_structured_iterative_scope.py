"""regrowth_structure_iterative.py --finetune_scope regrown: the final finetune trains only the filters
restored in some iteration (it shares run_iterative with regrowth_iterative.py)."""
import json
import os

import pytest
import torch

from tests.conftest import run_script
from tests.test_structured_scripts import DATA, structured  # noqa: F401  (the module-scoped fixture)


@pytest.mark.slow
def test_structured_iterative_finetune_scope_regrown(structured, tmp_path):  # noqa: F811
    save = str(tmp_path / "srg")
    proc = run_script("regrowth_structure_iterative.py", DATA + [
        "--work_dir", structured, "--save_dir", save, "--num_epochs", "2", "--num_iters", "2",
        "--mini_finetune_steps", "2", "--ssim_threshold", "0.5", "--saliency_batches", "2", "--ssim_num_batches", "2",
        "--finetune_epochs", "1", "--finetune_scope", "regrown"])
    assert "final: sparsity" in proc.stdout
    run_dir = os.path.join(save, "resnet20", "structured_iterative")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    start = torch.load(summary["start_ckpt"], weights_only=True)["state_dict"]
    last = torch.load(os.path.join(run_dir, "iter_1", "best_grown_model.pth"), weights_only=True)["state_dict"]
    final = torch.load(os.path.join(run_dir, "final_finetuned.pth"), weights_only=True)["state_dict"]
    changed = 0
    for key in (k for k in start if k.endswith("weight_mask") and start[k].dim() == 4):  # conv filters
        name = key[: -len(".weight_mask")]
        mask = last[key]
        assert torch.equal(final[key], mask)
        regrown = (mask > 0) & (start[key] == 0)
        before, after = last[f"{name}.weight_orig"] * mask, final[f"{name}.weight_orig"] * mask
        assert torch.equal(after[~regrown], before[~regrown]), name  # other filters untouched, pruned ones zero
        changed += int((after[regrown] != before[regrown]).sum())
    assert changed > 0
