"""Shared fixtures: tiny CIFAR-10 data in the real batch format, and helpers to run the scripts."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGES_PER_BATCH = 40  # 5 training batches of 40 images, and 40 test images


def write_cifar10(folder: Path, images_per_batch: int = IMAGES_PER_BATCH, seed: int = 0) -> Path:
    """Write a tiny dataset in the layout of cifar-10-batches-py under `folder`; return `folder`.

    Each class gets a different mean colour, so a model can learn something in a few steps.
    """
    rng = np.random.RandomState(seed)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = rng.randint(0, 10, images_per_batch)
        images = rng.randint(0, 96, (images_per_batch, 3, 32, 32)) + labels[:, None, None, None] * 16
        batch = {"batch_label": name, "labels": labels.tolist(),
                 "data": images.astype(np.uint8).reshape(images_per_batch, -1),
                 "filenames": [f"{name}_{i}.png" for i in range(images_per_batch)]}
        with open(batches / name, "wb") as file:
            pickle.dump(batch, file)
    with open(batches / "batches.meta", "wb") as file:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": images_per_batch,
                     "num_vis": 3072}, file)
    return folder


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("data"))


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
