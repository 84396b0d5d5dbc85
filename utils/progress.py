"""Progress bars and log lines that do not fight each other.

Bars go to stderr and only appear on an interactive terminal (or with BRIDGE_PROGRESS=1);
log lines always go to stdout through tqdm.write, so they are never torn by a bar.
"""
import os
import sys

from tqdm.auto import tqdm


def progress_enabled():
    env = os.environ.get("BRIDGE_PROGRESS")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def bar(iterable=None, **kwargs):
    """A tqdm bar, shown only when progress is enabled (and only by the main process under torchrun)."""
    kwargs.setdefault("disable", not progress_enabled() or os.environ.get("RANK", "0") != "0")
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)


def log(msg):
    """One line on stdout (only from the main process under torchrun)."""
    if os.environ.get("RANK", "0") != "0":
        return
    tqdm.write(str(msg), file=sys.stdout)
    sys.stdout.flush()
