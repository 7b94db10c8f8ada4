"""Shared fixtures: tiny CIFAR-10 data in the real batch format, and helpers to run the scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from tiny_cifar import write_cifar10  # noqa: E402  (after the path set-up above)

IMAGES_PER_BATCH = 40  # 5 training batches of 40 images, and 40 test images


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("data"))


# A search space for end-to-end searches: small batches for the tiny data, and the default ranges.
SPACE_TOML = """\
batch-size = 32

[lr]
log-uniform = [0.01, 0.4]

[lr-decay]
uniform = [0.0, 0.5]
"""


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.toml"
    path.write_text(SPACE_TOML)
    return path


# Flags of a fast configuration: the small model on the tiny data, one thread.
FAST = ["--model", "small", "--width", "0.5", "--lr", "0.05", "--batch-size", "32", "--threads", "1",
        "--device", "cpu"]


def run_train(args: list[str], scratch: Path, data_dir: Path, timeout: float = 120, **kwargs):
    """Run train.py as a subprocess with `args`, the scratch and the data folder."""
    argv = [sys.executable, str(ROOT / "train.py"), *args, "--scratch", str(scratch), "--data-dir", str(data_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)


def result_of(completed: subprocess.CompletedProcess) -> dict:
    """Parse the JSON result line, the last line train.py prints on stdout."""
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def checkpoint_files(scratch: Path) -> list[Path]:
    return sorted(p for p in Path(scratch).rglob("*.pt"))


def environment_without_gpus() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def environment_hiding(tmp_path: Path, package: str) -> dict:
    """Return an environment in which importing `package` raises ImportError, as when it is not installed."""
    blocker = tmp_path / "blocked" / package
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(f"raise ImportError('{package} is hidden by the test')\n")
    return {**os.environ, "PYTHONPATH": str(blocker.parent)}
