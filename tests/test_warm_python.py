"""tests/warm_python.py stands in for `python script.py` in the end-to-end tests: a run through it must look to
the script and to its caller exactly like a fresh interpreter (argv, folder, environment, umask, streams, thread
count, exit status, death by signal), and a caller that gives up on it must take the run down with it."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import stage_python

PROBE = r'''
import json, os, sys
import torch
line = sys.stdin.readline()
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": os.environ.get("PROBE_VALUE"),
                  "path0": sys.path[0], "name": __name__, "file": __file__, "stdin": line,
                  "threads": torch.get_num_threads(), "umask": os.umask(0o022)}))
print("to stderr", file=sys.stderr)
how = sys.argv[1]
if how == "raise":
    raise ValueError("probe failure")
if how == "signal":
    sys.stdout.flush()
    os.kill(os.getpid(), 15)
if how == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    import time
    time.sleep(60)
sys.exit(int(how))
'''


@pytest.fixture
def warm():
    python = stage_python()
    if python == sys.executable:
        pytest.skip("the warm server is off (BRIDGE_TEST_COLD=1) or could not start")
    return python


def _both(tmp_path, warm, *args, umask=0o027):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    env = dict(os.environ, PROBE_VALUE="é and spaces", OMP_NUM_THREADS="1")
    runs = []
    for python in (sys.executable, warm):
        runs.append(subprocess.run([python, "../probe.py", *args], cwd=work, env=env, input="a line\n",
                                   capture_output=True, text=True, timeout=120,
                                   preexec_fn=lambda: os.umask(umask)))
    return runs


def test_a_warm_run_looks_like_a_fresh_interpreter(tmp_path, warm):
    cold, hot = _both(tmp_path, warm, "3")
    assert hot.returncode == cold.returncode == 3
    assert hot.stdout == cold.stdout and hot.stderr == cold.stderr == "to stderr\n"
    seen = json.loads(hot.stdout)
    assert seen["argv"] == ["../probe.py", "3"] and seen["cwd"] == str(tmp_path / "cwd")
    assert seen["env"] == "é and spaces" and seen["stdin"] == "a line\n" and seen["name"] == "__main__"
    assert seen["path0"] == str(tmp_path) and seen["threads"] == 1 and seen["umask"] == 0o027


def test_failures_reach_the_caller_as_from_a_fresh_interpreter(tmp_path, warm):
    cold, hot = _both(tmp_path, warm, "raise")
    assert hot.returncode == cold.returncode == 1
    assert hot.stderr.endswith("ValueError: probe failure\n") and cold.stderr.endswith("ValueError: probe failure\n")
    cold, hot = _both(tmp_path, warm, "signal")
    assert hot.returncode == cold.returncode == -15 and hot.stdout == cold.stdout


def test_a_caller_that_gives_up_takes_the_run_down(tmp_path, warm):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    pid_file = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([warm, str(script), "sleep", str(pid_file)], input="\n", text=True, timeout=5)
    pid = int(pid_file.read_text())
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")


def test_what_is_not_a_script_runs_in_the_real_interpreter(warm):
    out = subprocess.run([warm, "-c", "import sys; print(sys.argv)", "x"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "['-c', 'x']\n"
