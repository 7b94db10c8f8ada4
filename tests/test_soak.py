"""The soak harness, short: a real search killed 10 times must still reach the reference result."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_search_survives_ten_kills(tmp_path):
    command = [sys.executable, str(ROOT / "tools" / "soak.py"), "--kills", "10", "--max-epochs", "4", "--eta", "2",
               "--interval", "0.5", "3", "--workdir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    figures = dict(line.strip().split(": ", 1) for line in completed.stdout.splitlines() if ": " in line)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert figures["kills survived"] == "10"
    assert figures["same leaderboard"] == "True"
    assert figures["leftover processes"] == "0"
    assert figures["checkpoints that fail to load"] == "0"
    assert int(figures["epochs redone"]) <= 10
    assert completed.stdout.strip().endswith("soak passed")
