"""History files: written by train.py beside the checkpoints, readable without torch, rebuilt when stale."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

import checkpoint
import history
from conftest import FAST, checkpoint_files, result_of, run_train

FAST_CONFIG = checkpoint.Config(model="small", width=0.5, lr=0.05, batch_size=32)


def history_file(scratch: Path) -> Path:
    return history.history_path(checkpoint.config_folder(scratch, FAST_CONFIG), FAST_CONFIG)


def latest_state(scratch: Path) -> dict:
    path = max(checkpoint_files(scratch), key=lambda p: checkpoint.parse_name(p.name).epoch)
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar_dir) -> Path:
    """Return a scratch folder where FAST has trained 2 epochs."""
    scratch = tmp_path_factory.mktemp("trained")
    result_of(run_train(FAST + ["--epochs", "2"], scratch, cifar_dir))
    return scratch


# ---------------------------------------------------------------- names


def test_history_name_never_parses():
    name = checkpoint.history_name(FAST_CONFIG)

    assert name.startswith(checkpoint.config_stem(FAST_CONFIG))
    assert checkpoint.parse_name(name) is None


def test_checkpoint_listing_skips_history(trained):
    folder = checkpoint.config_folder(trained, FAST_CONFIG)

    listed = [path.name for _, path in checkpoint.list_checkpoints(folder, FAST_CONFIG)]

    assert history_file(trained).exists()
    assert history_file(trained).name not in listed
    assert len(listed) == 2


# ---------------------------------------------------------------- written by train.py


def test_train_writes_history_per_epoch(trained):
    found = history.read_history(history_file(trained), FAST_CONFIG)
    state = latest_state(trained)

    assert found.status == "ok"
    assert found.epoch == 2
    assert [record["epoch"] for record in found.records] == [1, 2]
    assert [record["val_acc"] for record in found.records] == [record["val_acc"] for record in state["history"]]
    assert [record["examples_seen"] for record in found.records] == [180, 360]
    assert found.records == state["history"]


def test_history_records_have_timestamps(trained):
    records = history.read_history(history_file(trained), FAST_CONFIG).records
    written = history_file(trained).stat().st_mtime

    assert records[0]["timestamp"] < records[1]["timestamp"]
    assert records[1]["timestamp"] <= written + 1
    assert written - records[0]["timestamp"] < 600
    assert records[1]["timestamp"] - records[1]["epoch_seconds"] >= records[0]["timestamp"]


def test_missing_history_rebuilt_without_training(tmp_path, trained, cifar_dir):
    scratch = tmp_path / "scratch"
    folder = checkpoint.config_folder(scratch, FAST_CONFIG)
    folder.mkdir(parents=True)
    for path in checkpoint_files(trained):
        (folder / path.name).write_bytes(path.read_bytes())
    checkpoints_before = {path: path.stat().st_mtime_ns for path in checkpoint_files(scratch)}
    leftover = folder / f".{checkpoint.history_name(FAST_CONFIG)}{checkpoint.TEMP_MARKER}4242"
    leftover.write_text("{\"partial")

    completed = run_train(FAST + ["--epochs", "2"], scratch, cifar_dir)

    assert result_of(completed)["epochs_trained"] == 0
    assert history_file(scratch).read_bytes() == history_file(trained).read_bytes()
    assert {path: path.stat().st_mtime_ns for path in checkpoint_files(scratch)} == checkpoints_before
    assert not leftover.exists()
    assert completed.stderr.count(leftover.name) == 1


def test_current_history_left_untouched(trained, cifar_dir):
    before = history_file(trained).stat().st_mtime_ns

    result_of(run_train(FAST + ["--epochs", "1"], trained, cifar_dir))

    assert history_file(trained).stat().st_mtime_ns == before


# ---------------------------------------------------------------- reading and writing


def test_non_finite_loss_stored_as_null(tmp_path):
    state = {"config": FAST_CONFIG.to_dict(), "status": "diverged", "epoch": 1,
             "history": [{"epoch": 1, "train_loss": math.inf, "val_loss": math.nan, "val_acc": 0.1}]}

    assert history.write_history(tmp_path, state) is True
    text = history.history_path(tmp_path, FAST_CONFIG).read_text()
    record = json.loads(text)["history"][0]

    assert record["train_loss"] is None
    assert record["val_loss"] is None
    assert "NaN" not in text
    assert "Infinity" not in text
    assert history.write_history(tmp_path, state) is False


@pytest.mark.parametrize("contents", ["", "{\"format_version\": 1", "[]", "{\"format_version\": 99}",
                                      "{\"format_version\": 1, \"config\": {}, \"history\": []}"])
def test_unreadable_history_skipped(tmp_path, caplog, contents):
    path = history.history_path(checkpoint.config_folder(tmp_path, FAST_CONFIG), FAST_CONFIG)
    path.parent.mkdir(parents=True)
    path.write_text(contents)

    with caplog.at_level(logging.WARNING):
        found = history.load_history(tmp_path, FAST_CONFIG)

    assert found is None
    assert len(caplog.records) == 1
    assert path.name in caplog.records[0].getMessage()


def test_other_configs_history_rejected(tmp_path):
    other = checkpoint.Config(model="small", width=0.5, lr=0.07, batch_size=32)
    state = {"config": other.to_dict(), "status": "ok", "epoch": 0, "history": []}
    history.write_history(tmp_path, state)
    renamed = history.history_path(tmp_path, FAST_CONFIG)
    history.history_path(tmp_path, other).rename(renamed)

    with pytest.raises(history.UnreadableHistory, match="contains configuration"):
        history.read_history(renamed, FAST_CONFIG)
