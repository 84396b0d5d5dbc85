"""What a device loads: ONNX of the model a checkpoint describes, checked with onnxruntime against PyTorch.

Any checkpoint this project writes exports: a filter-pruned (masked) one as its compact model (the
masked filters physically removed, utils.compact), a compact file as it is, and a weight-pruned one with
its masks folded into the weights (a dense graph: the zeros cost storage, not time, on dense kernels).
The sparse weight file is utils.sparse_file.
"""
import os
import tempfile
import warnings
from dataclasses import dataclass

import torch

from models import model_loader, model_spec
from utils.checkpoints import COMPACT_FORMAT, model_from_checkpoint, peek_checkpoint
from utils.compact import export_compact, load_compact, time_callable, torch_latency
from utils.errors import BridgeError, UnknownChoiceError
from utils.granularity import FILTERS, WEIGHTS, granularity_of_model
from utils.masks import plain_copy
from utils.sparse_file import read_header, read_sparse

ONNX_OPSET = 17
LATENCY_BACKENDS = ("torch", "onnxruntime")


def onnxruntime():
    """The onnxruntime module, or one line saying how to install it."""
    try:
        import onnxruntime as ort  # imported on use: 0.2 s, and only exports and their latency need it
    except ImportError:
        raise BridgeError("onnxruntime is not installed: pip install onnxruntime (it checks and times the "
                          "exported model)") from None
    return ort


@dataclass(frozen=True)
class ExportSource:
    """What a checkpoint exports from: its masked model (None for a compact file), the deployable plain model
    (eval mode, CPU: the compact model of a filter-pruned one, the folded weights of a weight-pruned one), the
    model and data set names, the input size and a description."""

    masked: torch.nn.Module | None
    plain: torch.nn.Module
    m_name: str
    dataset: str | None
    input_size: int
    description: str


def load_for_export(path, trust_pickle=False):
    """The ExportSource of a checkpoint."""
    meta = peek_checkpoint(path, trust_pickle=trust_pickle)
    if meta.get("format") == COMPACT_FORMAT:
        compact, ckpt = load_compact(path)
        size = ckpt.get("input_size") or model_spec(ckpt["model"], ckpt.get("dataset")).input_size
        return ExportSource(None, compact.eval(), ckpt["model"], ckpt.get("dataset"), size,
                            "compact (filters removed)")
    m_name = meta.get("model")
    if not m_name:
        raise BridgeError(f"{path} does not record its model, so it cannot be rebuilt; convert it first "
                          "(convert_checkpoint.py --m_name ...)")
    model, ckpt = model_from_checkpoint(path, m_name, trust_pickle=trust_pickle)
    model.eval()
    dataset = ckpt.get("dataset")
    size = model_spec(m_name, dataset).input_size
    if granularity_of_model(model) is FILTERS:
        return ExportSource(model, export_compact(model, size).eval(), m_name, dataset, size,
                            "filter-pruned, exported compact (masked filters removed)")
    return ExportSource(model, plain_copy(model).eval(), m_name, dataset, size,
                        "weight-pruned, masks folded into the weights")


def export_onnx(model, input_size, path, opset=ONNX_OPSET):
    """Write `model` as ONNX with a dynamic batch axis (input "input", output "logits"); atomic."""
    tmp = f"{path}.tmp"
    example = torch.zeros(1, 3, input_size, input_size)
    with warnings.catch_warnings():  # the TorchScript-based exporter: 1.0 s for resnet20 against 3.9 s for the
        warnings.simplefilter("ignore")  # dynamo one (measured), no onnxscript; it warns that it is the older one
        torch.onnx.export(model, (example,), tmp, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    os.replace(tmp, path)
    return path


def onnx_session(path, threads=None):
    ort = onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_onnx(path, model, input_size, batch=8, seed=0):
    """Max |onnxruntime - PyTorch| over the outputs of a random batch (fp32, CPU)."""
    x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    got = onnx_session(path).run(None, {"input": x.numpy()})[0]
    return float((torch.from_numpy(got) - model(x)).abs().max())


def load_sparse_model(path):
    """The masked model a sparse weight file holds (eval mode, CPU): its recorded model, masks of its
    recorded granularity, the stored values."""
    meta = read_header(path)
    granularity = FILTERS if meta.get("granularity") == FILTERS.name else WEIGHTS
    model = model_loader(meta["model"], dataset=meta.get("dataset") or None)
    return read_sparse(path, granularity.add_masks(model)).eval()


def onnx_latency(path, input_size, batch, threads=None, min_run_time=0.3):
    """Latency of one forward pass of an exported model under onnxruntime (CPU, fp32), measured as
    torch_latency measures PyTorch's (utils.compact.time_callable)."""
    threads = threads or torch.get_num_threads()
    session = onnx_session(path, threads)
    feed = {"input": torch.randn(batch, 3, input_size, input_size).numpy()}
    return time_callable(lambda: session.run(None, feed), threads, min_run_time)


def latency_meter(backend, batch, threads=None):
    """A function (plain eval model, input size) -> Latency timing one forward pass at `batch` on the CPU:
    PyTorch eager ("torch"), or onnxruntime on the model exported to a temporary ONNX file ("onnxruntime")."""
    if backend not in LATENCY_BACKENDS:
        raise UnknownChoiceError("latency backend", backend, LATENCY_BACKENDS)
    if backend == "torch":
        return lambda model, input_size: torch_latency(model, input_size, batch, threads)
    onnxruntime()  # one line now if it is missing, not after the first level's export

    def measure(model, input_size):
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model.eval(), input_size, os.path.join(tmp, "model.onnx"))
            return onnx_latency(path, input_size, batch, threads)

    return measure
