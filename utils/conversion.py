"""Checkpoint conversion: any file this project can read (the published raw, dense, per-episode and
pickled-module formats included) rewritten in its own weights_only format, tensors unchanged."""
import os

from utils import cli
from utils.checkpoints import model_from_checkpoint, peek_checkpoint, save_checkpoint
from utils.errors import BridgeError
from utils.granularity import granularity_of_model
from utils.progress import log


def convert_checkpoints(files, out_dir, m_name=None, dataset="CIFAR10", trust_pickle=False):
    """Rewrite each file as {out_dir}/{its name}.pth; m_name for files that do not record their model,
    dataset for those that do not record theirs. Returns the written paths."""
    cli.check_writable(out_dir)
    written = []
    for path in files:
        meta = peek_checkpoint(path, trust_pickle=trust_pickle)  # the model name; tensors read once, below
        name = m_name or meta.get("model")
        if name is None:
            raise BridgeError(f"{path} does not record its model; pass --m_name")
        model, ckpt = model_from_checkpoint(path, name, trust_pickle=trust_pickle)
        out = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".pth")
        sparsity = ckpt.get("sparsity", granularity_of_model(model).sparsity(model))
        save_checkpoint(out, model, name, ckpt.get("dataset", dataset), ckpt.get("stage") or "converted",
                        ckpt.get("args") or {}, ckpt.get("metrics") or {}, sparsity=sparsity, source=path,
                        source_format=ckpt.get("format"))
        log(f"converted {path} ({ckpt.get('format')}) -> {out}")
        written.append(out)
    return written
