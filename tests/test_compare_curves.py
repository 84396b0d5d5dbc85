"""experiments/compare_pruning_curves.py on hand-made curve files."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_curves_and_typed_points_in_one_table(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("sparsity,val_acc,test_acc\n0.3125,80.0,79.5\n0.5357,70.0,69.25\n")
    out = tmp_path / "out"
    subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "compare_pruning_curves.py"), "--out", str(out),
                    "--curve", f"new={a}", "--points", "old=0.3125:75.1,0.6875:60"], check=True, capture_output=True)
    table = (out / "curves.md").read_text().splitlines()
    assert table[2] == "| sparsity | new test (val) | old test (val) |"
    assert "| 0.3125 | 79.50 (80.00) | 75.10 (-) |" in table
    assert "| 0.5357 | 69.25 (70.00) | - (-) |" in table
    assert "| 0.6875 | - (-) | 60.00 (-) |" in table
    assert (out / "curves.png").stat().st_size > 1000
