"""hyperband.py as a process: stopping it with SIGTERM, and two drivers on one search."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import ROOT
from soak import processes_of


def search_command(scratch: Path, data_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "hyperband.py"), "--model", "small", "--width", "0.5", "--max-epochs", "9",
            "--eta", "3", "--workers", "2", "--data-dir", str(data_dir), "--scratch", str(scratch), "--quiet"]


def wait_until(condition, timeout: float = 120, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_stops_driver_and_trials(tmp_path, cifar_dir):
    driver = subprocess.Popen(search_command(tmp_path, cifar_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_until(lambda: "trial" in processes_of(tmp_path).values(), process=driver)
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=30)
    finally:
        driver.kill()
    assert driver.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr
    assert "Traceback" not in stderr
    assert processes_of(tmp_path) == {}
    for path in tmp_path.glob("checkpoints/**/*.pt"):
        torch.load(path, map_location="cpu", weights_only=True)


def test_second_driver_names_first(tmp_path, cifar_dir):
    first = subprocess.Popen(search_command(tmp_path, cifar_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(p.read_text().strip() == str(first.pid)
                               for p in tmp_path.glob("searches/*/.lock")), process=first)
        second = subprocess.run(search_command(tmp_path, cifar_dir), capture_output=True, text=True, timeout=60)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
    assert second.returncode == 1
    assert f"process {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
