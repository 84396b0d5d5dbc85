"""Export a checkpoint for a device: ONNX of the model it describes, or the sparse weight file.

    python export.py --model_path CKPT --format onnx   --out DIR
    python export.py --model_path CKPT --format sparse --out DIR --storage bitmask|csr --value_dtype float32|float16

--format onnx writes {out}/{name}.onnx (dynamic batch axis, input "input", output "logits"): the compact
model of a filter-pruned checkpoint (masked filters removed), a compact file as it is, the masked weights
folded in for a weight-pruned one; then runs it with onnxruntime on a random batch and prints the largest
difference from PyTorch (fp32; refused above --tolerance, default 1e-4).

--format sparse writes {out}/{name}_{storage}_{value_dtype}.safetensors (utils/sparse_file.py): each masked
weight's alive values and their positions, everything else dense. Its size is the byte count the boundary
module uses (find_drop_point.py --max_bytes) plus the safetensors header, both printed; the file is read back
and compared with the checkpoint (masks and effective weights bit for bit in float32).

The model name is read from the checkpoint.
"""
import argparse
import os

import torch

from utils import cli
from utils.boundary import storage_bytes
from utils.errors import BridgeError, UnknownChoiceError
from utils.export import check_onnx, export_onnx, load_for_export, load_sparse_model, onnxruntime
from utils.granularity import granularity_of_model
from utils.masks import unmasked_state_dict
from utils.progress import log
from utils.sparse_file import STORAGE, VALUE_DTYPES, write_sparse

FORMATS = ("onnx", "sparse")


def get_args_parser():
    p = argparse.ArgumentParser("export.py", description="ONNX or sparse weight file of a checkpoint")
    p.add_argument("--model_path", required=True, help="a checkpoint of any stage (masked, structured or compact)")
    p.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's folder)")
    p.add_argument("--storage", default="bitmask", help=f"sparse: one of {', '.join(STORAGE)}")
    p.add_argument("--value_dtype", default="float32", help=f"sparse: one of {', '.join(VALUE_DTYPES)}")
    p.add_argument("--check_batch", type=int, default=8, help="images in the onnxruntime / read-back check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest fp32 output difference accepted")
    p.add_argument("--trust_pickle", action="store_true", help="allow reading pickled published checkpoints")
    return p


def main(args):
    cli.print_args(args, "export.py")
    if args.format not in FORMATS:
        raise UnknownChoiceError("export format", args.format, FORMATS)
    if args.format == "sparse" and args.storage not in STORAGE:
        raise UnknownChoiceError("storage", args.storage, STORAGE)
    if args.format == "sparse" and args.value_dtype not in VALUE_DTYPES:
        raise UnknownChoiceError("value dtype", args.value_dtype, VALUE_DTYPES)
    if args.format == "onnx":
        onnxruntime()  # before any work: one line if it is missing
    source = load_for_export(args.model_path, args.trust_pickle)
    out = cli.check_writable(args.out or os.path.dirname(os.path.abspath(args.model_path)))
    masked, plain, m_name, size = source.masked, source.plain, source.m_name, source.input_size
    name = os.path.splitext(os.path.basename(args.model_path))[0]
    log(f"{args.model_path}: {m_name}, {source.description}")
    if args.format == "onnx":
        path = export_onnx(plain, size, os.path.join(out, f"{name}.onnx"))
        diff = check_onnx(path, plain, size, args.check_batch)
        log(f"wrote {path} ({os.path.getsize(path):,} bytes); onnxruntime vs PyTorch on {args.check_batch} random "
            f"images: max abs diff {diff:.3g}")
        if not diff <= args.tolerance:
            raise BridgeError(f"the exported model differs from PyTorch by {diff:.3g} > --tolerance {args.tolerance}")
        return {"path": path, "max_abs_diff": diff, "bytes": os.path.getsize(path)}
    if masked is None:
        raise BridgeError(f"{args.model_path} is a compact model: it has no pruned weights left to store sparsely; "
                          "export its masked checkpoint, or use --format onnx")
    granularity = granularity_of_model(masked)
    path = os.path.join(out, f"{name}_{args.storage}_{args.value_dtype}.safetensors")
    payload, header = write_sparse(path, masked, m_name, granularity.name, args.storage, args.value_dtype,
                                   source.dataset)
    counted = storage_bytes(masked, args.storage, VALUE_DTYPES[args.value_dtype].itemsize)
    back = load_sparse_model(path)
    same, diff = compare(masked, back, size, args.check_batch, exact=args.value_dtype == "float32")
    log(f"wrote {path}: {os.path.getsize(path):,} bytes = {payload:,} bytes of tensors (the boundary count for "
        f"--storage {args.storage} at {VALUE_DTYPES[args.value_dtype].itemsize} bytes a value: {counted:,}) + "
        f"{header:,} bytes of header")
    log(f"read back: masks and effective weights {'bit for bit' if same else 'NOT'} equal"
        f"{' (float16 values: rounded)' if args.value_dtype != 'float32' else ''}; max abs output diff {diff:.3g}")
    if args.value_dtype == "float32" and not same:
        raise BridgeError("internal error: the sparse file does not read back into the same model")
    return {"path": path, "bytes": os.path.getsize(path), "tensor_bytes": payload, "header_bytes": header,
            "boundary_bytes": counted, "read_back_equal": same, "max_abs_diff": diff}


@torch.no_grad()
def compare(model, back, input_size, batch, exact):
    """(masks and effective weights equal (rounded to float16 unless `exact`), max |output difference|)."""
    a, b = model.state_dict(), back.state_dict()
    masks = all(torch.equal(a[k], b[k]) for k in a if k.endswith("_mask"))
    ua, ub = unmasked_state_dict(a), unmasked_state_dict(b)
    def cast(t):
        return t if exact or not t.is_floating_point() else t.half()

    values = all(torch.equal(cast(ua[k]), cast(ub[k])) for k in ua)
    x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    return masks and values, float((model(x) - back(x)).abs().max())


if __name__ == "__main__":
    cli.run(main, get_args_parser())
