"""Command-line plumbing shared by the stage scripts.

Each script defines `get_args_parser()` and `main(args)` and ends with `run(main, get_args_parser())`,
which prints every argument, turns user errors into one line on stderr with exit status 2, and
lets tests call `main(parser.parse_args([...]))` in-process.
"""
import os
import sys

from data.data_loader import data_loader
from data.specs import BACKENDS, SPECS, canonical_dataset_name
from models import model_spec
from utils.errors import BridgeError
from utils.progress import log
from utils.runtime import configure_backends


def add_data_args(parser, dataset="CIFAR10", batch_size=128):
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=dataset, help="CIFAR10, tiny_imagenet or digits (bundled, offline)")
    g.add_argument("--data_dir", default="./data", help="where the data sets live (never modified)")
    g.add_argument("--batch_size", type=int, default=batch_size, help="training batch size")
    g.add_argument("--eval_batch_size", type=int, default=None, help="evaluation batch size (default max(batch, 256))")
    g.add_argument("--val_split", type=float, default=0.1, help="fraction of the training images held out for validation")
    g.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers (the in-memory tensor backend needs none)")
    g.add_argument("--data_backend", default="auto", choices=BACKENDS,
                   help="tensor: images in memory, batched augmentation; loader: torchvision transforms + DataLoader")
    g.add_argument("--no_download", action="store_true", help="never try to download a missing data set")
    g.add_argument("--train_limit", type=int, default=None, help="use a fixed random subset of this many training images")
    g.add_argument("--test_limit", type=int, default=None, help="use a fixed random subset of this many test images")
    return g


def add_runtime_args(parser, seed=42, trains=True, precision=True):
    """--device, --seed, --deterministic, --precision (unless a script always computes in fp32:
    precision=False) and, for scripts that train (trains=True), --compile.

    An evaluation-only script gets args.compile = False: compiling only speeds up training steps.
    """
    from utils.runtime import DEVICE_CHOICES, PRECISION_CHOICES

    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if precision:
        g.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                       help="auto: bf16 autocast + channels_last where the hardware supports it, else fp32")
    if trains:
        g.add_argument("--compile", action="store_true", default=None,
                       help="run training steps through torch.compile: ~15%% faster resnet20 steps on CPU after a "
                            "one-time compile of ~40-55 s (also BRIDGE_COMPILE=1); pays off for runs of many minutes")
    else:
        parser.set_defaults(compile=False)
    g.add_argument("--seed", type=int, default=seed)
    g.add_argument("--deterministic", action="store_true",
                   help="CUDA: deterministic kernels only (no cuDNN autotuning), so reruns and resumed runs "
                        "repeat the same numbers; slower steps (CPU runs repeat without it)")
    return g


def check_fraction(name, value, low_inclusive=True):
    """Sparsities and amounts must lie in [0, 1) (or (0, 1))."""
    ok = (0.0 <= value < 1.0) if low_inclusive else (0.0 < value < 1.0)
    if not ok:
        rng = "[0, 1)" if low_inclusive else "(0, 1)"
        raise BridgeError(f"{name} must be in {rng}, got {value}")
    return value


def check_writable(folder):
    """Fail early, with one line, if outputs cannot be written under `folder` (created if missing)."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise BridgeError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return folder


def build_data(args, device):
    """DataBundle for the script's data arguments; checks that the model fits the data."""
    name = canonical_dataset_name(args.dataset)
    if getattr(args, "m_name", None):
        family = model_spec(args.m_name).dataset_family
        if family != SPECS[name].model_family:
            raise BridgeError(f"model {args.m_name} is built for {family} data, not for dataset {name}; "
                              "pick a matching --m_name or --dataset")
    check_fraction("--val_split", args.val_split)
    return data_loader(data_dir=args.data_dir, val_split=args.val_split, batch_size=args.batch_size,
                       num_workers=args.num_workers, dataset=name, device=device, seed=args.seed,
                       backend=args.data_backend, eval_batch_size=args.eval_batch_size,
                       download=not args.no_download, train_limit=args.train_limit, test_limit=args.test_limit)


def print_args(args, title=None):
    """Every argument and its value, one per line (the defaults a run used are part of its record)."""
    items = vars(args)
    width = max(len(k) for k in items) if items else 0
    log(f"== {title or os.path.basename(sys.argv[0])} ==")
    for k in sorted(items):
        log(f"  {k:<{width}} = {items[k]}")


def run(main, parser, argv=None):
    """Parse argv, run main(args); a BridgeError becomes `error: ...` on stderr and exit status 2."""
    args = parser.parse_args(argv)
    from utils import distributed

    try:
        configure_backends(getattr(args, "deterministic", False))  # before CUDA starts (cuBLAS reads its env)
        distributed.init(getattr(args, "device", "auto"))
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
