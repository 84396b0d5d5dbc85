"""Command-line plumbing shared by the stage scripts.

Each script defines `get_args_parser()` and `main(args)` and ends with `run(main, get_args_parser())`,
which prints every argument, turns user errors into one line on stderr with exit status 2, and
lets tests call `main(parser.parse_args([...]))` in-process.
"""
import os
import sys
import tempfile

from data.data_loader import data_loader
from data.specs import SPECS, canonical_dataset_name
from models import model_spec
from utils.errors import BridgeError
from utils.hparams import RuntimeHparams
from utils.progress import log
from utils.runtime import configure_backends


def check_fraction(name, value, low_inclusive=True):
    """Sparsities and amounts must lie in [0, 1) (or (0, 1))."""
    ok = (0.0 <= value < 1.0) if low_inclusive else (0.0 < value < 1.0)
    if not ok:
        rng = "[0, 1)" if low_inclusive else "(0, 1)"
        raise BridgeError(f"{name} must be in {rng}, got {value}")
    return value


def check_writable(folder):
    """Fail early, with one line, if outputs cannot be written under `folder` (created if missing)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise BridgeError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return folder


def build_data(data, seed, device, m_name=None):
    """DataBundle for a DataHparams (and the run's seed); checks that the model `m_name` fits the data."""
    name = canonical_dataset_name(data.dataset)
    if m_name:
        family = model_spec(m_name, name).dataset_family  # None: a torchvision model, which fits any data
        if family not in (None, SPECS[name].model_family):
            raise BridgeError(f"model {m_name} is built for {family} data, not for dataset {name}; "
                              "pick a matching --m_name or --dataset")
    check_fraction("--val_split", data.val_split)
    return data_loader(data_dir=data.data_dir, val_split=data.val_split, batch_size=data.batch_size,
                       num_workers=data.num_workers, dataset=name, device=device, seed=seed,
                       backend=data.data_backend, eval_batch_size=data.eval_batch_size,
                       download=not data.no_download, train_limit=data.train_limit, test_limit=data.test_limit)


def print_args(args, title=None):
    """Every argument and its value, one per line (the defaults a run used are part of its record);
    `args` is a parsed Namespace or a `hparams.record` dict."""
    items = args if isinstance(args, dict) else vars(args)
    width = max(len(k) for k in items) if items else 0
    log(f"== {title or os.path.basename(sys.argv[0])} ==")
    for k in sorted(items):
        log(f"  {k:<{width}} = {items[k]}")


def run(main, parser, argv=None):
    """Parse argv, run main(args); a BridgeError becomes `error: ...` on stderr and exit status 2."""
    args = parser.parse_args(argv)
    from utils import distributed

    try:
        runtime = RuntimeHparams.from_args(args)
        configure_backends(runtime.deterministic)  # before CUDA starts (cuBLAS reads its env)
        distributed.init(runtime.device)
        return main(args)
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # a file problem the library did not anticipate: still one line, no traceback
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(2)
    finally:
        if distributed.is_distributed():
            import torch.distributed as torch_dist

            torch_dist.destroy_process_group()
