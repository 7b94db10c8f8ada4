"""bench/gpu.py on the CPU with tiny settings: both tables come out complete, with positive figures."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT, environment_without_gpus


def table_rows(output: str, header_start: str) -> list[list[str]]:
    """Return the cells of the markdown table whose header starts with `header_start`."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_gpu_benchmark_runs_on_cpu():
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--tiny", "--processes", "1", "2",
         "--packing-models", "resnet18"],
        capture_output=True, text=True, timeout=300, env=environment_without_gpus(), cwd=ROOT)

    assert completed.returncode == 0, completed.stderr
    epochs = table_rows(completed.stdout, "| model | precision")
    assert [(row[0], row[1]) for row in epochs] == [("vgg16", "fp32"), ("vgg16", "bf16"), ("resnet18", "fp32"),
                                                    ("resnet18", "bf16")]
    for row in epochs:
        assert int(row[2]) == 90  # 100 generated images less the validation tenth
        assert float(row[3]) > 0
        assert float(row[4]) > 0
    packing = table_rows(completed.stdout, "| model (fp32)")
    assert [(row[0], row[1]) for row in packing] == [("resnet18", "1"), ("resnet18", "2")]
    assert all(float(row[2]) > 0 for row in packing)
    assert packing[0][3] == "1.00"
    assert "against 1 process |" in completed.stdout
    assert re.search(r"device: CPU, torch \S+, width 0.0625, batch 32", completed.stdout)
