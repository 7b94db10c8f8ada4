"""runs.py: listing configurations from checkpoint names, sorted, filtered and in three formats.

The checkpoints here are empty files named with checkpoint.format_name, because runs.py reads names only.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import checkpoint
import runs
from conftest import ROOT


def config(**values) -> checkpoint.Config:
    return checkpoint.Config(**{"model": "small", "width": 0.5, **values})


def touch_checkpoint(scratch: Path, config: checkpoint.Config, epoch: int, val_acc: float | None) -> Path:
    folder = checkpoint.config_folder(scratch, config)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint.format_name(config, epoch, val_acc)
    path.write_bytes(b"")
    return path


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A scratch folder with five configurations of two models and two datasets, and stray files."""
    touch_checkpoint(tmp_path, config(lr=0.1), 3, 0.41)
    touch_checkpoint(tmp_path, config(lr=0.2), 2, 0.62)  # best, then worse at the latest epoch
    touch_checkpoint(tmp_path, config(lr=0.2), 5, 0.55)
    touch_checkpoint(tmp_path, config(lr=0.4), 2, None)  # diverged
    touch_checkpoint(tmp_path, config(model="vgg11", lr=0.05), 9, 0.73)
    touch_checkpoint(tmp_path, config(dataset="cifar100", lr=0.1), 1, 0.12)

    folder = checkpoint.config_folder(tmp_path, config())
    stem = checkpoint.config_stem(config(lr=0.1))
    (folder / checkpoint.history_name(config(lr=0.1))).write_text("{}")
    (folder / f"{stem}_ep0004_acc0.9000.pt.unusable").write_bytes(b"")
    (folder / f".{stem}_ep0004_acc0.9000.pt{checkpoint.TEMP_MARKER}77").write_bytes(b"")
    (folder / f".{stem}.lock").write_text("123")
    (folder / f"{stem}_ep4_acc0.9000.pt").write_bytes(b"")  # almost a checkpoint name
    (folder / "notes.txt").write_text("not a checkpoint")
    return tmp_path


def run_runs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "runs.py"), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


# ---------------------------------------------------------------- finding runs


def test_runs_sorted_best_first(scratch):
    found = runs.find_runs(scratch)

    assert [(run.config.model, run.config.dataset, run.config.lr) for run in found] == [
        ("vgg11", "cifar10", 0.05), ("small", "cifar10", 0.2), ("small", "cifar10", 0.1),
        ("small", "cifar100", 0.1), ("small", "cifar10", 0.4)]


def test_best_and_latest_read_from_names(scratch):
    (run,) = [run for run in runs.find_runs(scratch) if run.config == config(lr=0.2)]

    assert run.epochs == 5
    assert run.latest_val_acc == 0.55
    assert run.best_val_acc == 0.62
    assert run.best_epoch == 2
    assert run.status == "ok"
    assert run.latest_checkpoint.name == checkpoint.format_name(config(lr=0.2), 5, 0.55)
    assert run.best_checkpoint.name == checkpoint.format_name(config(lr=0.2), 2, 0.62)


def test_diverged_run_listed_last(scratch):
    last = runs.find_runs(scratch)[-1]

    assert last.config == config(lr=0.4)
    assert last.status == "diverged"
    assert last.latest_val_acc is None
    assert last.best_val_acc is None
    assert last.best_checkpoint is None


def test_stray_files_ignored(scratch):
    found = runs.find_runs(scratch, dataset="cifar10", model="small")

    assert len(found) == 3
    (run,) = [run for run in found if run.config == config(lr=0.1)]
    assert run.epochs == 3  # not the 4 of the .unusable, temporary or almost-parsing names


def test_filters_select_dataset_and_model(scratch):
    assert [run.config.model for run in runs.find_runs(scratch, model="vgg11")] == ["vgg11"]
    assert [run.config.dataset for run in runs.find_runs(scratch, dataset="cifar100")] == ["cifar100"]
    assert len(runs.find_runs(scratch, dataset="cifar10", model="small")) == 3
    assert runs.find_runs(scratch, model="resnet18") == []


def test_checkpoint_in_wrong_folder_filtered(tmp_path):
    # A cifar100 checkpoint copied into the cifar10 folder still belongs to cifar100.
    moved = touch_checkpoint(tmp_path, config(dataset="cifar100"), 1, 0.3)
    target = checkpoint.config_folder(tmp_path, config())
    target.mkdir(parents=True)
    moved.rename(target / moved.name)

    assert runs.find_runs(tmp_path, dataset="cifar10") == []
    assert len(runs.find_runs(tmp_path, dataset="cifar100")) == 1


# ---------------------------------------------------------------- formats


def test_csv_has_every_column(scratch):
    found = runs.find_runs(scratch)

    rows = list(csv.DictReader(io.StringIO(runs.format_csv(found))))

    assert len(rows) == 5
    assert list(rows[0]) == runs.COLUMNS
    assert rows[0]["model"] == "vgg11"
    assert rows[0]["lr"] == "0.05"
    assert rows[0]["best_val_acc"] == "0.73"
    assert rows[-1]["status"] == "diverged"
    assert rows[-1]["best_val_acc"] == ""
    assert Path(rows[1]["latest_checkpoint"]).name == checkpoint.format_name(config(lr=0.2), 5, 0.55)


def test_csv_without_runs_keeps_header():
    assert runs.format_csv([]).splitlines() == [",".join(runs.COLUMNS)]


def test_json_round_trips_configs(scratch):
    found = runs.find_runs(scratch)

    records = json.loads(runs.format_json(found))

    assert len(records) == 5
    assert [checkpoint.Config(**{key: record[key] for key in runs.CONFIG_FIELDS}) for record in records] == [
        run.config for run in found]
    assert records[1]["best_epoch"] == 2
    assert records[1]["latest_val_acc"] == 0.55
    assert records[-1]["best_val_acc"] is None


def test_table_aligns_columns(scratch):
    lines = runs.format_table(runs.find_runs(scratch)).splitlines()

    assert lines[0].split() == ["dataset", "model", "width", "lr", "lr-decay", "lr-step", "momentum",
                                "weight-decay", "batch-size", "seed", "val-fraction", "split-seed", "precision", "epochs", "best", "acc",
                                "best", "epoch", "latest", "acc", "status"]
    assert len(lines) == 6
    assert lines[1].split()[:4] == ["cifar10", "vgg11", "0.5", "0.05"]
    assert lines[1].split()[-5:] == ["9", "0.7300", "9", "0.7300", "ok"]
    assert lines[-1].split()[-5:] == ["2", "-", "-", "-", "diverged"]
    status_column = lines[0].index("status")
    assert all(line[status_column:].strip() in ("status", "ok", "diverged") for line in lines)


# ---------------------------------------------------------------- command line


def test_command_prints_each_format(scratch):
    table = run_runs("--scratch", str(scratch))
    as_csv = run_runs("--scratch", str(scratch), "--format", "csv")
    as_json = run_runs("--scratch", str(scratch), "--format", "json", "--model", "small", "--dataset", "cifar10")

    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:2] == ["dataset", "model"]
    assert "5 configurations in" in table.stderr
    assert as_csv.returncode == 0, as_csv.stderr
    assert len(list(csv.DictReader(io.StringIO(as_csv.stdout)))) == 5
    assert as_json.returncode == 0, as_json.stderr
    assert [record["lr"] for record in json.loads(as_json.stdout)] == [0.2, 0.1, 0.4]
    assert "matching --dataset cifar10 --model small" in as_json.stderr


def test_command_imports_no_torch(scratch):
    code = ("import sys, runs; runs.main(['--scratch', sys.argv[1]]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'), file=sys.stderr)")
    completed = subprocess.run([sys.executable, "-c", code, str(scratch)], capture_output=True, text=True,
                               cwd=ROOT, timeout=60)

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == "[]"


def test_missing_checkpoints_folder_exits_1(tmp_path):
    completed = run_runs("--scratch", str(tmp_path))

    assert completed.returncode == 1
    assert f"no checkpoints folder in {tmp_path}" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("flag, value", [("--model", "../vgg11"), ("--dataset", "*"), ("--model", "VGG11"),
                                         ("--format", "xml")])
def test_invalid_input_exits_2(scratch, flag, value):
    completed = run_runs("--scratch", str(scratch), flag, value)

    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith("runs.py: error:")
    assert flag in completed.stderr
    assert value in completed.stderr
