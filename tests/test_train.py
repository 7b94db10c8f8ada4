"""train.py end to end, as a subprocess: resume, idempotence, damage, kills, locking, bad input."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint
from conftest import FAST, ROOT, checkpoint_files, result_of, run_train


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(scratch: Path) -> Path:
    files = checkpoint_files(scratch)
    return max(files, key=lambda p: checkpoint.parse_name(p.name).epoch)


def assert_states_equal(first: dict, second: dict) -> None:
    assert first["model"].keys() == second["model"].keys()
    for key in first["model"]:
        assert torch.equal(first["model"][key], second["model"][key]), key
    first_optimizer, second_optimizer = first["optimizer"]["state"], second["optimizer"]["state"]
    assert first_optimizer.keys() == second_optimizer.keys()
    for key in first_optimizer:
        assert torch.equal(first_optimizer[key]["momentum_buffer"], second_optimizer[key]["momentum_buffer"])
    assert torch.equal(first["rng"]["data"], second["rng"]["data"])
    assert [h["val_acc"] for h in first["history"]] == [h["val_acc"] for h in second["history"]]
    assert [h["train_loss"] for h in first["history"]] == [h["train_loss"] for h in second["history"]]


# ---------------------------------------------------------------- exact resume and idempotence


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_equals_uninterrupted(tmp_path, cifar_dir, precision):
    # The decay at epoch 2 checks that the schedule follows the absolute epoch.
    flags = FAST + ["--lr-step", "2", "--lr-decay", "0.5", "--precision", precision]
    split, whole = tmp_path / "split", tmp_path / "whole"
    first = result_of(run_train(flags + ["--epochs", "2"], split, cifar_dir))
    assert first["epochs_trained"] == 2
    resumed = result_of(run_train(flags + ["--epochs", "4"], split, cifar_dir))
    assert resumed["epochs_trained"] == 2
    direct = result_of(run_train(flags + ["--epochs", "4"], whole, cifar_dir))
    assert resumed["val_acc"] == direct["val_acc"]
    assert resumed["val_loss"] == direct["val_loss"]
    assert_states_equal(load(latest_checkpoint(split)), load(latest_checkpoint(whole)))
    assert [h["lr"] for h in load(latest_checkpoint(whole))["history"]] == [0.05, 0.05, 0.025, 0.025]


def test_bf16_and_split_seed_are_separate_runs(tmp_path, cifar_dir):
    standard = result_of(run_train(FAST, tmp_path, cifar_dir))
    bf16 = result_of(run_train(FAST + ["--precision", "bf16"], tmp_path, cifar_dir))
    resplit = result_of(run_train(FAST + ["--split-seed", "3"], tmp_path, cifar_dir))
    assert Path(bf16["checkpoint"]).name.endswith("_bf16_ep0001_acc%.4f.pt" % bf16["val_acc"])
    assert "_split3_ep0001_" in Path(resplit["checkpoint"]).name
    assert len({standard["checkpoint"], bf16["checkpoint"], resplit["checkpoint"]}) == 3
    assert all(result["epochs_trained"] == 1 for result in (standard, bf16, resplit))
    # Another split validates on other images, so its loss differs from the standard split's.
    assert resplit["val_loss"] != standard["val_loss"]


def test_finished_config_trains_nothing(tmp_path, cifar_dir):
    first = run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir)
    files = {p: p.stat().st_mtime_ns for p in checkpoint_files(tmp_path)}
    again = run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir)
    assert result_of(again) == {**result_of(first), "epochs_trained": 0}
    assert {p: p.stat().st_mtime_ns for p in checkpoint_files(tmp_path)} == files


def test_fewer_epochs_reports_history(tmp_path, cifar_dir):
    run_train(FAST + ["--epochs", "3"], tmp_path, cifar_dir)
    history = load(latest_checkpoint(tmp_path))["history"]
    earlier = result_of(run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir))
    assert earlier["epoch"] == 1
    assert earlier["val_acc"] == history[0]["val_acc"]
    assert earlier["latest_epoch"] == 3
    assert earlier["epochs_trained"] == 0


def test_checkpoint_contents(tmp_path, cifar_dir):
    result = result_of(run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir))
    path = Path(result["checkpoint"])
    parsed = checkpoint.parse_name(path.name)
    state = load(path)  # weights_only=True: tensors and plain values only
    assert path.parent == tmp_path / "checkpoints" / "cifar10" / "small"
    assert parsed.epoch == 1
    assert parsed.val_acc == checkpoint.round_accuracy(result["val_acc"])
    assert state["config"] == parsed.config.to_dict()
    assert state["format_version"] == checkpoint.FORMAT_VERSION
    assert set(state["rng"]) == {"data", "torch", "cuda"}
    assert set(state["history"][0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                        "examples_seen", "wall_time", "epoch_seconds", "timestamp"}
    assert state["history"][0]["examples_seen"] == 180  # 200 images less the 10% validation split


def test_keeps_latest_and_best_only(tmp_path, cifar_dir):
    run_train(FAST + ["--epochs", "5"], tmp_path, cifar_dir)
    epochs = sorted(checkpoint.parse_name(p.name).epoch for p in checkpoint_files(tmp_path))
    assert 1 <= len(epochs) <= 2
    assert epochs[-1] == 5


def test_result_line_is_last_stdout_line(tmp_path, cifar_dir):
    completed = run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {"status", "epoch", "val_acc", "val_loss", "checkpoint"} <= set(result)
    assert result["status"] == "ok"


def test_scratch_from_environment(tmp_path, cifar_dir):
    argv = [sys.executable, str(ROOT / "train.py"), *FAST, "--epochs", "1", "--data-dir", str(cifar_dir)]
    completed = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                               env={**os.environ, "SCRATCH": str(tmp_path / "env-scratch")})
    assert completed.returncode == 0, completed.stderr
    assert "$SCRATCH" in completed.stderr
    assert checkpoint_files(tmp_path / "env-scratch")


# ---------------------------------------------------------------- divergence


def test_divergence_reported_and_remembered(tmp_path, cifar_dir):
    flags = FAST + ["--lr", "1e+12", "--epochs", "3"]
    completed = run_train(flags, tmp_path, cifar_dir)
    first = result_of(completed)
    assert first["status"] == "diverged"
    assert "NaN" not in completed.stdout  # strict JSON: non-finite losses are null
    assert "Infinity" not in completed.stdout
    assert any(checkpoint.parse_name(p.name).diverged for p in checkpoint_files(tmp_path))
    again = result_of(run_train(flags + [], tmp_path, cifar_dir))
    assert again["status"] == "diverged"
    assert again["epochs_trained"] == 0


# ---------------------------------------------------------------- damaged checkpoints


def test_truncated_newest_resumes_from_older(tmp_path, cifar_dir):
    reference = result_of(run_train(FAST + ["--epochs", "2"], tmp_path / "reference", cifar_dir))
    scratch = tmp_path / "damaged"
    run_train(FAST + ["--epochs", "2"], scratch, cifar_dir)
    newest = latest_checkpoint(scratch)
    assert len(checkpoint_files(scratch)) == 2
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    completed = run_train(FAST + ["--epochs", "2"], scratch, cifar_dir)
    result = result_of(completed)
    assert str(newest.name) in completed.stderr
    assert "resuming from" in completed.stderr
    assert result["epochs_trained"] == 1
    assert result["val_acc"] == reference["val_acc"]
    assert newest.with_name(newest.name + ".unusable").exists()


def test_only_checkpoint_damaged_stops(tmp_path, cifar_dir):
    run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir)
    (only,) = checkpoint_files(tmp_path)
    only.write_bytes(b"")
    completed = run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir)
    assert completed.returncode == checkpoint.EXIT_UNUSABLE_CHECKPOINTS
    assert str(only.name) in completed.stderr
    assert "To start this configuration over, delete them" in completed.stderr
    assert checkpoint_files(tmp_path) == [only]  # nothing trained from scratch


def test_start_over_command_spares_siblings(tmp_path, cifar_dir):
    # The bf16 configuration's names extend the fp32 one's stem, so a wildcard would delete it too.
    run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir)
    (damaged,) = checkpoint_files(tmp_path)
    result_of(run_train(FAST + ["--epochs", "1", "--precision", "bf16"], tmp_path, cifar_dir))
    siblings = [path for path in damaged.parent.iterdir() if path != damaged and not path.name.startswith(".")]
    damaged.write_bytes(b"")
    completed = run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir)
    assert completed.returncode == checkpoint.EXIT_UNUSABLE_CHECKPOINTS

    command = completed.stderr.split("delete them and its history: ")[1].splitlines()[0]
    subprocess.run(command, shell=True, check=True)
    assert not damaged.exists()
    remaining = [path for path in damaged.parent.iterdir() if not path.name.startswith(".")]
    assert sorted(p.name for p in remaining) == sorted(p.name for p in siblings if "bf16" in p.name)
    assert len(remaining) == 2  # the bf16 checkpoint and its history file
    assert result_of(run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir))["epochs_trained"] == 1


class _Payload:
    """Unpickling this creates the marker file, as a hostile checkpoint would run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_checkpoint_not_executed(tmp_path, cifar_dir):
    run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir)
    (good,) = checkpoint_files(tmp_path)
    marker = tmp_path / "marker"
    config = checkpoint.parse_name(good.name).config
    hostile = good.with_name(checkpoint.format_name(config, 2, 0.9))
    torch.save({"payload": _Payload(marker)}, hostile)  # a zip checkpoint whose pickle runs code

    completed = run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir)
    assert result_of(completed)["epoch"] == 2
    assert hostile.name in completed.stderr
    assert not marker.exists()


# ---------------------------------------------------------------- processes and signals


def wait_for_checkpoint(scratch: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not checkpoint_files(scratch):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def start_train(args, scratch, data_dir) -> subprocess.Popen:
    argv = [sys.executable, str(ROOT / "train.py"), *args, "--scratch", str(scratch), "--data-dir", str(data_dir)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_sigkill_then_rerun_is_exact(tmp_path, cifar_dir):
    flags = FAST + ["--epochs", "6"]
    process = start_train(flags, tmp_path / "killed", cifar_dir)
    wait_for_checkpoint(tmp_path / "killed", process)
    process.kill()
    process.communicate()
    assert all(not p.name.startswith(".") for p in (tmp_path / "killed").rglob("*.pt*"))

    resumed = result_of(run_train(flags, tmp_path / "killed", cifar_dir))
    assert resumed["epochs_trained"] < 6
    direct = result_of(run_train(flags, tmp_path / "direct", cifar_dir))
    assert resumed["val_acc"] == direct["val_acc"]
    assert_states_equal(load(latest_checkpoint(tmp_path / "killed")), load(latest_checkpoint(tmp_path / "direct")))


def test_sigterm_stops_cleanly(tmp_path, cifar_dir):
    process = start_train(FAST + ["--epochs", "50"], tmp_path, cifar_dir)
    wait_for_checkpoint(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr
    assert "Traceback" not in stderr
    for path in checkpoint_files(tmp_path):
        checkpoint.load_checkpoint(path, checkpoint.parse_name(path.name).config)
    assert not [p for p in tmp_path.rglob("*") if checkpoint.TEMP_MARKER in p.name]


def test_same_config_twice_at_once(tmp_path, cifar_dir):
    flags = FAST + ["--epochs", "4"]
    first = start_train(flags, tmp_path, cifar_dir)
    second = start_train(flags, tmp_path, cifar_dir)
    outputs = [process.communicate(timeout=180) for process in (first, second)]
    assert first.returncode == 0, outputs[0][1]
    assert second.returncode == 0, outputs[1][1]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert sum(result["epochs_trained"] for result in results) == 4
    assert results[0]["val_acc"] == results[1]["val_acc"]
    assert len(load(latest_checkpoint(tmp_path))["history"]) == 4


def test_lock_timeout_exits(tmp_path, cifar_dir):
    config = checkpoint.Config(model="small", width=0.5, lr=0.05, batch_size=32)
    folder = checkpoint.config_folder(tmp_path, config)
    folder.mkdir(parents=True)
    lock = checkpoint.ConfigLock(folder, config)
    lock.acquire()
    try:
        completed = run_train(FAST + ["--epochs", "1", "--lock-timeout", "0.5"], tmp_path, cifar_dir)
    finally:
        lock.release()
    assert completed.returncode == checkpoint.EXIT_LOCK_TIMEOUT
    assert str(os.getpid()) in completed.stderr


# ---------------------------------------------------------------- invalid input


@pytest.mark.parametrize("flag, value", [
    ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"), ("--batch-size", "0"), ("--epochs", "0"),
    ("--model", "nosuchnet"), ("--dataset", "mnist"), ("--width", "0"), ("--momentum", "1"),
    ("--lr-decay", "2"), ("--lr-step", "0"), ("--weight-decay", "-1"), ("--val-fraction", "1"),
    ("--seed", "-3"), ("--threads", "0"), ("--device", "tpu"), ("--epochs", "three"),
    ("--split-seed", "-1"), ("--precision", "fp16"),
])
def test_invalid_input_exits_2(tmp_path, cifar_dir, flag, value):
    completed = run_train(FAST + ["--epochs", "1", flag, value], tmp_path / "scratch", cifar_dir)
    assert completed.returncode == 2
    assert value in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("train.py: error:")
    assert not (tmp_path / "scratch").exists()


def test_unknown_model_lists_known(tmp_path, cifar_dir):
    completed = run_train(["--model", "nosuchnet"], tmp_path / "scratch", cifar_dir)
    assert "vgg11" in completed.stderr
    assert "resnet18" in completed.stderr


def test_missing_data_says_where(tmp_path):
    # No network is assumed: the download fails and the message names the folder where the files go.
    completed = run_train(FAST + ["--epochs", "1"], tmp_path / "scratch", tmp_path / "empty",
                          env={**os.environ, "NO_PROXY": "", "https_proxy": "http://127.0.0.1:9"})
    assert completed.returncode == checkpoint.EXIT_DATA_MISSING
    assert "cifar-10-batches-py" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "scratch" / "checkpoints").exists()
    assert not (tmp_path / "empty").exists()  # the failed download left no empty folder


def test_data_folder_may_be_read_only(tmp_path, cifar_dir):
    # The cache goes under the scratch folder, never into the data folder.
    before = sorted(p.name for p in cifar_dir.rglob("*"))
    result_of(run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir))
    assert sorted(p.name for p in cifar_dir.rglob("*")) == before
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))


def test_data_dir_that_is_a_file(tmp_path):
    not_a_folder = tmp_path / "data.tar"
    not_a_folder.write_bytes(b"x")
    completed = run_train(FAST + ["--epochs", "1"], tmp_path / "scratch", not_a_folder)
    assert completed.returncode == 2
    assert str(not_a_folder) in completed.stderr
    assert not (tmp_path / "scratch").exists()


def test_scratch_under_a_file_exits_2(tmp_path, cifar_dir):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    completed = run_train(FAST + ["--epochs", "1"], blocker / "scratch", cifar_dir)
    assert completed.returncode == 2
    assert "--scratch" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert blocker.read_bytes() == b"x"


# ---------------------------------------------------------------- failing saves and other damage


def limit_file_size(size: int):
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def test_full_disk_keeps_previous_checkpoint(tmp_path, cifar_dir):
    result_of(run_train(FAST + ["--epochs", "1"], tmp_path, cifar_dir))
    (previous,) = checkpoint_files(tmp_path)
    before = previous.read_bytes()
    # No file may grow past 1 KB, far less than a checkpoint: the write fails with EFBIG.
    completed = run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir, preexec_fn=limit_file_size(1024))
    assert completed.returncode == checkpoint.EXIT_SAVE_FAILED
    assert str(previous.parent) in completed.stderr
    assert "File too large" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert checkpoint_files(tmp_path) == [previous]
    assert previous.read_bytes() == before
    assert not [p for p in tmp_path.rglob("*") if checkpoint.TEMP_MARKER in p.name]


def make_damage(kind: str, good: Path, other: Path) -> Path:
    """Put a damaged or foreign file of kind `kind` into `good`'s folder; return its path."""
    config = checkpoint.parse_name(good.name).config
    newer = good.with_name(checkpoint.format_name(config, 5, 0.5))
    if kind == "zero bytes":
        newer.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        newer.write_bytes(data[: len(data) * 3 // 7])
    elif kind == "random bytes":
        newer.write_bytes(os.urandom(good.stat().st_size))
    elif kind == "other configuration":
        newer.write_bytes(other.read_bytes())
    elif kind == "leftover temporary":
        newer = good.with_name(f".{newer.name}{checkpoint.TEMP_MARKER}4242")
        newer.write_bytes(good.read_bytes()[:100])
    elif kind == "almost parses":
        newer = good.with_name(newer.name.replace("_ep0005_", "_ep5_"))
        newer.write_bytes(b"junk")
    return newer


@pytest.fixture(scope="module")
def two_trained_configs(tmp_path_factory, cifar_dir) -> Path:
    """Return a scratch folder where FAST and FAST with --lr 0.07 have each trained one epoch."""
    scratch = tmp_path_factory.mktemp("two-configs")
    result_of(run_train(FAST + ["--epochs", "1"], scratch, cifar_dir))
    result_of(run_train(FAST + ["--epochs", "1", "--lr", "0.07"], scratch, cifar_dir))
    return scratch


@pytest.mark.parametrize("kind", ["zero bytes", "truncated", "random bytes", "other configuration",
                                  "leftover temporary", "almost parses"])
def test_damaged_file_resumes_from_good(tmp_path, cifar_dir, two_trained_configs, kind):
    shutil.copytree(two_trained_configs, tmp_path, dirs_exist_ok=True)
    good, other = sorted(checkpoint_files(tmp_path), key=lambda p: checkpoint.parse_name(p.name).config.lr)
    damaged = make_damage(kind, good, other)

    completed = run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir)
    result = result_of(completed)
    assert result["epoch"] == 2
    assert result["epochs_trained"] == 1  # resumed from the good epoch-1 checkpoint
    if kind in ("almost parses",):
        assert damaged.exists()  # not a checkpoint name: left alone and not mentioned
        assert damaged.name not in completed.stderr
    else:
        assert completed.stderr.count(damaged.name) == 1  # warned once, with the path
        assert not damaged.exists()
    again = run_train(FAST + ["--epochs", "2"], tmp_path, cifar_dir)
    assert damaged.name not in again.stderr


# ---------------------------------------------------------------- the test set


def test_test_flag_stores_then_reads(tmp_path, cifar_dir):
    completed = run_train(FAST + ["--epochs", "2", "--test"], tmp_path, cifar_dir)
    first = result_of(completed)
    stored_path = tmp_path / "checkpoints" / "cifar10" / "small" / checkpoint.test_result_name(
        checkpoint.parse_name(Path(first["checkpoint"]).name).config, 2)
    stored = json.loads(stored_path.read_text())
    assert 0.0 <= first["test_acc"] <= 1.0
    assert first["test_loss"] > 0
    assert stored["test_acc"] == first["test_acc"]
    assert stored["test_loss"] == first["test_loss"]
    assert stored["epoch"] == 2
    assert stored["checkpoint"] == Path(first["checkpoint"]).name
    # Checkpoint names stay as they were, and only checkpoints parse as checkpoint names.
    assert all(checkpoint.parse_name(p.name) is not None for p in checkpoint_files(tmp_path))
    assert checkpoint.parse_name(stored_path.name) is None

    # A rerun reports the stored result without evaluating again.
    written = stored_path.stat().st_mtime_ns
    completed = run_train(FAST + ["--epochs", "2", "--test"], tmp_path, cifar_dir)
    again = result_of(completed)
    assert again == {**first, "epochs_trained": 0}
    assert stored_path.stat().st_mtime_ns == written
    assert "read from" in completed.stderr


def test_test_result_matches_evaluation(tmp_path, cifar_dir):
    import data
    import models
    import training

    result = result_of(run_train(FAST + ["--epochs", "1", "--test"], tmp_path, cifar_dir))
    model = models.build_model("small", 0.5, 10)
    model.load_state_dict(load(Path(result["checkpoint"]))["model"])
    test_x, test_y = data.load_test_data("cifar10", cifar_dir, None, torch.device("cpu"))
    metrics = training.evaluate(model, test_x, test_y, 256)
    assert result["test_acc"] == metrics.accuracy
    assert result["test_loss"] == pytest.approx(metrics.loss, rel=1e-5)


def test_test_flag_diverged_has_none(tmp_path, cifar_dir):
    result = result_of(run_train(FAST + ["--lr", "1e+12", "--epochs", "2", "--test"], tmp_path, cifar_dir))
    assert result["status"] == "diverged"
    assert result["test_acc"] is None
    assert json.loads(next(tmp_path.rglob("*.test.json")).read_text())["status"] == "diverged"


def test_test_flag_pruned_epoch_exits_1(tmp_path, cifar_dir):
    result = result_of(run_train(FAST + ["--epochs", "4"], tmp_path, cifar_dir))
    assert "test_acc" not in result  # without --test
    assert list(tmp_path.rglob("*.test.json")) == []
    kept = {checkpoint.parse_name(p.name).epoch for p in checkpoint_files(tmp_path)}
    missing = min(set(range(1, 5)) - kept)
    completed = run_train(FAST + ["--epochs", str(missing), "--test"], tmp_path, cifar_dir)
    assert completed.returncode == 1
    assert f"epoch {missing} was not kept" in completed.stderr
    assert "--epochs 4 with --test" in completed.stderr
    assert list(tmp_path.rglob("*.test.json")) == []
