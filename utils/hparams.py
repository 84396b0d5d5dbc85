"""Typed hyper-parameters, in the style of open_lth's foundations/hparams.py.

Each concern (data, runtime, the models a stage reads, and in their packages the search, reward,
controller and finetune) is a frozen dataclass whose fields declare their command-line flags: a
script adds a dataclass's flags to its parser (`add_args`, with per-script defaults), and
`from_args` builds the typed object the library receives. Scripts and `from_args` are the only
readers of an argparse Namespace; flag names are the field names.

    @dataclass(frozen=True)
    class ExampleHparams(Hparams):
        group = "example"
        steps: int = flag(100, "how many steps")
"""
import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import ClassVar

from data.specs import BACKENDS
from models import MODEL_HELP
from utils import paths
from utils.runtime import DEVICE_CHOICES, PRECISION_CHOICES


def flag(default, help="", *, type=None, choices=None, action=None, nargs=None, aliases=(), required=False):
    """A dataclass field that is also a command-line flag `--{name}` (argparse keywords as given)."""
    spec = {"help": help}
    for key, value in (("type", type), ("choices", choices), ("action", action), ("nargs", nargs)):
        if value is not None:
            spec[key] = value
    if required:
        spec["required"] = True
    meta = {"flag": spec, "aliases": tuple(aliases)}
    if isinstance(default, list):  # a frozen dataclass keeps a tuple; the flag's default stays the list
        return field(default=tuple(default), metadata={**meta, "flag_default": list(default)})
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Hparams:
    """Base of the typed hyper-parameter groups (see module docstring)."""

    group: ClassVar[str] = None  # argparse group title (None: top level)

    @classmethod
    def add_args(cls, parser, *, omit=(), fixed=None, defaults=None, choices=None):
        """Declare the flags of every field on `parser`.

        defaults / choices: per-script values by field name; a help text may say `{default}`.
        fixed: fields this script sets without a flag (recorded in the arguments with that value);
        omit: fields this script has no flag and no value for (`from_args` uses the field default).
        """
        fixed, defaults, choices = dict(fixed or {}), dict(defaults or {}), dict(choices or {})
        unknown = (set(fixed) | set(defaults) | set(choices) | set(omit)) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
        target = parser.add_argument_group(cls.group) if cls.group else parser
        for f in fields(cls):
            if f.name in omit:
                continue
            if f.name in fixed:
                parser.set_defaults(**{f.name: fixed[f.name]})
                continue
            spec = dict(f.metadata["flag"])
            default = defaults.get(f.name, f.metadata.get("flag_default", f.default))
            if f.name in choices:
                spec["choices"] = choices[f.name]
            spec["help"] = spec["help"].replace("{default}", str(default))
            if spec.get("required"):
                default = None
            target.add_argument(f"--{f.name}", *f.metadata["aliases"], dest=f.name, default=default, **spec)
        return target

    @classmethod
    def from_args(cls, args, **changes):
        """The typed values of a parsed Namespace (a field the script has no flag for keeps its default)."""
        values = {}
        for f in fields(cls):
            if hasattr(args, f.name):
                value = getattr(args, f.name)
                values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**{**values, **changes})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def flags(self):
        """{flag name: value}: what `print_args` and the records show for this group."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class DataHparams(Hparams):
    group = "data"

    dataset: str = flag("CIFAR10", "CIFAR10, tiny_imagenet or digits (bundled, offline)")
    data_dir: str = flag("./data", "where the data sets live (never modified)")
    batch_size: int = flag(128, "training batch size", type=int)
    eval_batch_size: int = flag(None, "evaluation batch size (default max(batch, 256))", type=int)
    val_split: float = flag(0.1, "fraction of the training images held out for validation", type=float)
    num_workers: int = flag(min(4, os.cpu_count() or 1), "DataLoader workers (the in-memory tensor backend needs none)",
                            type=int)
    data_backend: str = flag("auto", "tensor: images in memory, batched augmentation; loader: torchvision transforms "
                             "+ DataLoader", choices=BACKENDS)
    no_download: bool = flag(False, "never try to download a missing data set", action="store_true")
    train_limit: int = flag(None, "use a fixed random subset of this many training images", type=int)
    test_limit: int = flag(None, "use a fixed random subset of this many test images", type=int)


@dataclass(frozen=True)
class RuntimeHparams(Hparams):
    """Where and how a stage computes. Scripts that only evaluate fix compile=False (compiling only speeds
    up training steps); a script that always computes in fp32 omits precision."""

    group = "runtime"

    device: str = flag("auto", f"one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    precision: str = flag("auto", "auto: bf16 autocast + channels_last where the hardware supports it, else fp32",
                          choices=PRECISION_CHOICES)
    compile: bool = flag(None, "run training steps through torch.compile: ~15%% faster resnet20 steps on CPU after a "
                         "one-time compile of ~40-55 s (also BRIDGE_COMPILE=1); pays off for runs of many minutes",
                         action="store_true")
    seed: int = flag(42, "random seed: initialisation, data order and augmentation, the controller's sampling (the "
                     "validation split has its own fixed seed)", type=int)
    deterministic: bool = flag(False, "CUDA: deterministic kernels only (no cuDNN autotuning), so reruns and resumed "
                               "runs repeat the same numbers; slower steps (CPU runs repeat without it)",
                               action="store_true")


@dataclass(frozen=True)
class ModelSource(Hparams):
    """Which model a stage works on and where the earlier stages left it."""

    m_name: str = flag("resnet20", MODEL_HELP)
    dense_ckpt: str = flag(None, "dense pretrained model (default {work_dir}/{m_name}/checkpoint/ckpt.pth)")
    work_dir: str = flag(".", "folder holding the {m_name}/ tree of the earlier stages")
    trust_pickle: bool = flag(False, "allow reading pickled published checkpoints", action="store_true")

    def dense_path(self):
        """--dense_ckpt, else the pretraining stage's checkpoint under --work_dir."""
        return self.dense_ckpt or paths.dense_checkpoint(self.work_dir, self.m_name)


def record(args, *groups):
    """The arguments a run prints and records: the parsed flags, with the groups' resolved values over them
    (e.g. what --fast filled in); a field the script has no flag for is not one of its arguments."""
    merged = dict(vars(args))
    for g in groups:
        merged.update({k: v for k, v in g.flags().items() if k in merged})
    return merged
