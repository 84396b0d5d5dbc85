"""scripts/gpu_smoke.sh stops at the first failing step, naming the command and showing its log's tail."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_smoke.sh")


def test_script_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_first_failure_stops_with_command_and_last_40_lines(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\nfor i in $(seq 1 50); do echo \"log line $i\"; done\nexit 3\n")
    fake.chmod(0o755)
    env = dict(os.environ, DEVICE="cpu", PY=str(fake), SMOKE_DIR=str(tmp_path / "smoke"), STEP_TIMEOUT="20")
    proc = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    out = proc.stdout
    assert proc.returncode == 1
    assert "FAIL environment" in out and "(exit 3)" in out
    assert f"command: {fake} - cpu" in out
    tail = out.split("--- last 40 lines of ")[1].splitlines()[1:]
    assert tail == [f"log line {i}" for i in range(11, 51)]
    assert "PASS" not in out  # nothing after the failure ran
