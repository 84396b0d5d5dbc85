"""Where the stages read and write: the output tree's names, spelled once for every script and report.py.

    {work_dir}/{m}/checkpoint/ckpt.pth, last.pth           pretrain.py (dense model, resume state)
    {work_dir}/{m}/{pruning folder}/{m}_{sparsity}.pth      prune_*.py levels, with prune_log.jsonl
    {save_dir}/{m}/.../{run name}/summary.json              regrowth runs (save_dir: each script's default below)

A run name is the script's base name, then `_{allocator}` unless the allocator is the published `rl`,
then `_{tag}` when --tag is given.
"""
import glob
import os

from utils.errors import BridgeError

PRETRAIN_FOLDER = "checkpoint"
DENSE_FILE = "ckpt.pth"
PRETRAIN_STATE_FILE = "last.pth"
# the pruning stages' output folders under {work_dir}/{m}/ (prune_unstructure.py: iterative, oneshot;
# prune_structure.py: structured_*)
PRUNING_FOLDERS = ("iterative", "oneshot", "structured_iterative", "structured_oneshot")
# the regrowth scripts' default --save_dir (the published folder names)
ONESHOT_SAVE_DIR = "./rl_saliency_oneshot"
ITERATIVE_SAVE_DIR = "./rl_checkpoints"
STRUCTURED_SAVE_DIR = "./structured_rl_ckpts"
REGROWTH_SAVE_DIRS = (ONESHOT_SAVE_DIR, ITERATIVE_SAVE_DIR, STRUCTURED_SAVE_DIR)


def pretrain_dir(work_dir, m_name):
    return os.path.join(work_dir, m_name, PRETRAIN_FOLDER)


def dense_checkpoint(work_dir, m_name):
    """The dense model of {work_dir}/{m_name}: ours (pretrain.py), or the published file name when only it exists."""
    folder = pretrain_dir(work_dir, m_name)
    ours, published = os.path.join(folder, DENSE_FILE), os.path.join(folder, f"pretrain_{m_name}_ckpt.pth")
    return published if not os.path.isfile(ours) and os.path.isfile(published) else ours


def level_filename(m_name, sparsity):
    """A pruning level's file, published naming: the sparsity rounded to 4 decimals, Python's repr ('0.3', '0.657',
    '0.9953')."""
    return f"{m_name}_{round(sparsity, 4)}.pth"


def pruned_checkpoint(work_dir, m_name, folder, sparsity_label):
    """A pruning level by the label a user types (--model_sparsity 0.98 -> {work_dir}/{m}/{folder}/{m}_0.98.pth)."""
    return os.path.join(work_dir, m_name, folder, f"{m_name}_{sparsity_label}.pth")


def run_name(base, allocator=None, tag=None):
    """A regrowth run's folder name (see the module docstring; no allocator: no allocator suffix)."""
    return str(base) + ("" if allocator in (None, "rl") else f"_{allocator}") + (f"_{tag}" if tag else "")


def checkpoint_files(path):
    """[path] for a file; for a folder, its .pth files (recursively), without temporaries and run states."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise BridgeError(f"--model_path not found: {path}")
    files = sorted(p for p in glob.glob(os.path.join(path, "**", "*.pth"), recursive=True)
                   if not os.path.basename(p).startswith((".tmp", "search_", "last.pth")))
    if not files:
        raise BridgeError(f"no .pth checkpoint under {path}")
    return files
