"""train.py's TensorBoard scalars: one run per configuration, no duplicate points, optional package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import checkpoint
import tensorboard_scalars
from conftest import FAST, ROOT, checkpoint_files, environment_hiding, result_of, run_train

FAST_CONFIG = checkpoint.Config(model="small", width=0.5, lr=0.05, batch_size=32)
EXAMPLES_PER_EPOCH = 180  # training images of the tiny data set after the validation split


def scalar_steps(folder: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_scalars_not_duplicated_on_resume(tmp_path, cifar_dir):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install tensorboard)")
    result_of(run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir))
    # Lose the second epoch's checkpoint, as a kill before its save would, so that epoch is trained again.
    latest = max(checkpoint_files(tmp_path), key=lambda path: checkpoint.parse_name(path.name).epoch)
    latest.unlink()

    resumed = result_of(run_train(FAST + ["--epochs", "3"], tmp_path, cifar_dir))

    folder = tensorboard_scalars.run_folder(tmp_path, FAST_CONFIG)
    expected = [EXAMPLES_PER_EPOCH * epoch for epoch in (1, 2, 3)]
    assert resumed["epochs_trained"] == 2
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    for tag in tensorboard_scalars.TAGS:
        assert scalar_steps(folder, tag) == expected, tag


def test_training_works_without_tensorboard(tmp_path, cifar_dir):
    hidden = environment_hiding(tmp_path, "tensorboard")

    completed = run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir, env=hidden)

    assert result_of(completed)["epochs_trained"] == 1
    assert "Traceback" not in completed.stderr
    assert "WARNING" not in completed.stderr
    assert not (tmp_path / "tensorboard").exists()


def test_help_says_how_to_enable():
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                               timeout=60, cwd=ROOT)

    text = " ".join(completed.stdout.split())  # argparse wraps lines at the terminal width
    assert completed.returncode == 0
    assert "pip install tensorboard" in text
    assert "SCRATCH/tensorboard/" in text
