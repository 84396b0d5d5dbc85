"""The final finetune after regrowth: warm-up + cosine (or constant) AdamW, optionally restricted to the
regrown weights (--finetune_scope regrown: every other weight stays bit-identical)."""
import math
import os

import torch

from utils import distributed as dist
from utils.compute import pass_flops
from utils.masks import masked_modules
from utils.progress import log
from utils.records import append_jsonl
from utils.runtime import set_seed
from utils.training import evaluate, finetune


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


def final_finetune(setup, model, weight_idx, steps, desc="final finetune", evals_path=None):
    """Finetune the regrown model `steps` steps (scope per --finetune_scope, schedule per --finetune_schedule);
    returns (val, test, FinetuneResult or None). With --eval_every each evaluation is a row of `evals_path`."""
    hp = setup.hp.finetune
    res = None
    regrown_only = hp.finetune_scope == "regrown"
    if not steps or steps <= 0:
        pass
    elif regrown_only and not any(idx.numel() for idx in weight_idx.values()):
        log(f"{desc}: nothing was regrown, so --finetune_scope regrown has no weights to train; skipped")
    else:
        after = restrict_to_regrown(model, weight_idx) if regrown_only else None
        params = [p for p in model.parameters() if p.requires_grad]
        weight_decay = 0.0 if regrown_only else 0.01
        opt = torch.optim.AdamW(params, lr=hp.finetune_lr, weight_decay=weight_decay)
        schedule = cosine_with_warmup(opt, steps) if hp.finetune_schedule == "cosine" else None
        eval_every = hp.eval_every
        if evals_path and eval_every and dist.is_main() and os.path.isfile(evals_path):
            os.remove(evals_path)
        macs, spent = setup.macs(model) if setup.macs else 0, setup.compute.total if setup.compute else 0.0

        def on_eval(row, _best_state):
            if evals_path and eval_every and dist.is_main():
                append_jsonl(evals_path, {**row, "training_flops": spent + pass_flops(macs, row["images"], True)})

        set_seed(setup.hp.runtime.seed)
        res = finetune(model, setup.data.train, setup.data.val, opt, setup.device, setup.precision, steps=steps,
                       scheduler=schedule, desc=desc, after_step=after, ddp=True, eval_every=eval_every,
                       on_eval=on_eval)
        setup.charge("final_finetune", model, res.images, backward=True)
        for p in model.parameters():
            p.requires_grad_(True)
    val_acc, _ = evaluate(model, setup.data.val, setup.device, setup.precision)
    test_acc, _ = evaluate(model, setup.data.test, setup.device, setup.precision)
    return val_acc, test_acc, res
