"""Shared fixtures: small models, tiny data folders, and helpers that run the stage scripts."""
import atexit
import functools
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("BRIDGE_PROGRESS", "0")
# saliency / SSIM caches of test runs go to a throw-away folder, never into the repository
if "BRIDGE_CACHE_DIR" not in os.environ:
    os.environ["BRIDGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="bridge-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BRIDGE_CACHE_DIR"], ignore_errors=True)
# under pytest-xdist (`make test` runs one worker per core) each worker and the scripts it starts get their share
# of the cores: two workers with two threads each on two cores spin against each other
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, torch.get_num_threads()) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

_ROOT_ENTRIES = set(os.listdir(ROOT))


def pytest_sessionfinish(session, exitstatus):
    """Tests write under their temporary folders: a run that leaves a new entry in the repository root (a stage
    run without --work_dir, say) fails the session. Checked once, by the process that ran (or ran the workers of)
    the whole session."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    new = sorted(set(os.listdir(ROOT)) - _ROOT_ENTRIES - {".pytest_cache", "__pycache__"})
    if new:
        print(f"\nerror: the tests left new entries in the repository root: {', '.join(new)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def load_script(relative_path):
    """A script outside the packages (bench/, scripts/) imported as a module, for testing its functions."""
    path = os.path.join(ROOT, relative_path)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyNet(nn.Module):
    """Three convs and a classifier: enough layers for the first/last-layer rules of the pruners."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def prepare_work_dir(wd, data, epochs, *prune_runs):
    """pretrain.py, then prune_unstructure.py once per argument list in prune_runs, in-process into wd:
    the dense + pruned checkpoints the script tests start from. Returns wd."""
    import pretrain
    import prune_unstructure

    pretrain.main(pretrain.get_args_parser().parse_args(data + ["--epochs", str(epochs), "--work_dir", wd]))
    for extra in prune_runs:
        prune_unstructure.main(prune_unstructure.get_args_parser().parse_args(data + ["--work_dir", wd] + extra))
    return wd


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


def stage_python():
    """The `python` the stage processes run under: a client of this test process's warm server
    (tests/warm_python.py: torch and the other third-party modules imported once, a fresh fork per run), or the
    plain interpreter under BRIDGE_TEST_COLD=1 or where the server cannot start. Same argv, folder, environment,
    streams and exit status either way."""
    if os.environ.get("BRIDGE_TEST_COLD") == "1":
        return sys.executable
    return _start_warm_python()


@functools.cache  # one server per test process, started by its first stage run
def _start_warm_python():
    folder = tempfile.mkdtemp(prefix="bridge-warm-python-")
    sock = os.path.join(folder, "socket")
    helper = os.path.join(ROOT, "tests", "warm_python.py")
    server = subprocess.Popen([sys.executable, helper, "serve", sock], env=dict(os.environ, PYTHONPATH=ROOT),
                              stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=folder)

    def stop():
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    if server.stdout.readline().strip() != "ready":
        return sys.executable
    # one word, so that a study script's unquoted $PY and subprocess argv take it alike
    wrapper = os.path.join(folder, "python")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(helper)} client {shlex.quote(sock)} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    probe = os.path.join(folder, "probe.py")
    with open(probe, "w") as f:
        f.write("print('warm')\n")
    try:  # a machine where the server cannot run (no pidfd, no fd passing) gets plain processes
        ok = subprocess.run([wrapper, probe], capture_output=True, text=True, timeout=60).stdout == "warm\n"
    except (OSError, subprocess.SubprocessError):
        ok = False
    return wrapper if ok else sys.executable


def run_script(script, args, cwd=None, check=True, timeout=600, env=None):
    """Run a stage script through the shell, as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, BRIDGE_PROGRESS="0", **(env or {}))
    proc = subprocess.run([stage_python(), os.path.join(ROOT, script), *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_study(study, tmp_path, env, timeout):
    """Run `experiments/<study>` through bash with WORK and RESULTS under tmp_path and the budgets in `env`, as a
    user would; returns its stdout."""
    full_env = dict(os.environ, PY=stage_python(), PYTHONPATH=ROOT, WORK=str(tmp_path / "work"),
                    RESULTS=str(tmp_path / "results"), **env)
    proc = subprocess.run(["bash", os.path.join(ROOT, "experiments", study)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{study} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout
