"""Checkpoint names, atomic saves, pruning and the per-configuration lock."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import checkpoint
from checkpoint import Config, format_name, parse_name


AWKWARD_CONFIGS = [
    Config(),
    Config(lr=1e-7, weight_decay=0.0, lr_decay=0.0, momentum=0.0),
    Config(lr=123456.0, width=0.125, lr_decay=1.0, momentum=0.999),
    Config(lr=3.0e-05, weight_decay=1.5e-12, seed=2**40, batch_size=1, lr_step=1000),
    Config(dataset="cifar100", model="resnet18", val_fraction=0.001),
    Config(lr=0.1234, lr_decay=0.1235),
    Config(split_seed=7),
    Config(precision="bf16"),
    Config(split_seed=2**32 - 1, precision="bf16", seed=5),
]


@pytest.mark.parametrize("config", AWKWARD_CONFIGS)
@pytest.mark.parametrize("epoch, acc", [(0, 0.0), (1, 1.0), (9999, 0.5), (12345, 0.1235), (3, None)])
def test_name_round_trip(config, epoch, acc):
    parsed = parse_name(format_name(config, epoch, acc))
    assert parsed is not None
    assert parsed.config == config
    assert parsed.epoch == epoch
    assert parsed.val_acc == acc


def test_name_keeps_four_significant_digits():
    config = Config(lr=0.0123456789)
    assert config.lr == 0.01235
    assert "_lr0.01235_" in format_name(config, 1, 0.5)


def test_names_differ_in_last_kept_digit():
    first = format_name(Config(lr=0.1234), 1, 0.5)
    second = format_name(Config(lr=0.1235), 1, 0.5)
    assert first != second
    assert parse_name(first).config != parse_name(second).config


def test_every_field_changes_the_name():
    base = Config()
    changes = {"dataset": "cifar100", "model": "vgg16", "width": 0.5, "lr": 0.2, "lr_decay": 0.5, "lr_step": 7,
               "momentum": 0.5, "weight_decay": 1e-3, "batch_size": 64, "seed": 3, "val_fraction": 0.2,
               "split_seed": 1, "precision": "bf16"}
    assert set(changes) == {field.name for field in dataclasses.fields(Config)}
    names = {format_name(dataclasses.replace(base, **{key: value}), 1, 0.5) for key, value in changes.items()}
    names.add(format_name(base, 1, 0.5))
    assert len(names) == len(changes) + 1


def test_name_omits_default_split_precision():
    name = format_name(Config(), 1, 0.5)
    assert "split" not in name
    assert "fp32" not in name
    assert name.endswith("_val0.1_ep0001_acc0.5000.pt")


def test_split_and_precision_tokens_in_name():
    name = format_name(Config(split_seed=3, precision="bf16"), 1, 0.5)
    assert "_val0.1_split3_bf16_ep0001_" in name


@pytest.mark.parametrize("token", ["_split0", "_fp32", "_split03"])
def test_non_canonical_optional_token_rejected(token):
    name = format_name(Config(), 1, 0.5).replace("_ep0001", token + "_ep0001")
    assert parse_name(name) is None


def test_epoch_is_zero_padded():
    assert "_ep0007_" in format_name(Config(), 7, 0.5)


def test_accuracy_rounded_to_four_decimals():
    assert checkpoint.round_accuracy(0.123456) == 0.1235
    assert format_name(Config(), 1, checkpoint.round_accuracy(2 / 3)).endswith("_acc0.6667.pt")


@pytest.mark.parametrize("name", [
    "notes.txt",
    "cifar10_vgg11.pt",
    format_name(Config(), 1, 0.5).replace(".pt", ".pt.tmp"),
    format_name(Config(), 1, 0.5).replace("_lr0.1_", "_lr0.10_"),  # not canonical
    format_name(Config(), 1, 0.5).replace("_ep0001_", "_ep1_"),
    format_name(Config(), 1, 0.5).replace("_acc0.5000", "_acc0.5"),
    format_name(Config(), 1, 0.5).replace("_lr0.1_", "_lrabc_"),
    "." + format_name(Config(), 1, 0.5) + checkpoint.TEMP_MARKER + "123",
])
def test_parse_rejects_other_names(name):
    assert parse_name(name) is None


def test_format_rejects_accuracy_out_of_range():
    with pytest.raises(ValueError, match="val_acc"):
        format_name(Config(), 1, 1.5)


def test_format_rejects_negative_epoch():
    with pytest.raises(ValueError, match="epoch"):
        format_name(Config(), -1, 0.5)


def test_list_ignores_foreign_files(tmp_path):
    config, other = Config(), Config(lr=0.2)
    for name in [format_name(config, 2, 0.3), format_name(config, 10, 0.4), format_name(other, 5, 0.9),
                 "README", format_name(config, 3, 0.3) + ".unusable"]:
        (tmp_path / name).write_bytes(b"x")
    found = checkpoint.list_checkpoints(tmp_path, config)
    assert [parsed.epoch for parsed, _ in found] == [2, 10]  # by number, not string order


def _state(config: Config, epoch: int) -> dict:
    return {"format_version": checkpoint.FORMAT_VERSION, "config": config.to_dict(), "epoch": epoch,
            "status": "ok", "history": [], "weights": torch.arange(4.0)}


def test_save_then_load(tmp_path):
    config = Config()
    path = tmp_path / format_name(config, 1, 0.5)
    checkpoint.save_atomic(_state(config, 1), path)
    state = checkpoint.load_checkpoint(path, config)
    assert state["epoch"] == 1
    assert torch.equal(state["weights"], torch.arange(4.0))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_load_rejects_other_configuration(tmp_path):
    path = tmp_path / format_name(Config(), 1, 0.5)
    checkpoint.save_atomic(_state(Config(lr=0.3), 1), path)
    with pytest.raises(checkpoint.UnusableCheckpoint, match="configuration"):
        checkpoint.load_checkpoint(path, Config())


def test_load_rejects_truncated_file(tmp_path):
    config = Config()
    path = tmp_path / format_name(config, 1, 0.5)
    checkpoint.save_atomic(_state(config, 1), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.UnusableCheckpoint, match="cannot be loaded"):
        checkpoint.load_checkpoint(path, config)


def test_failed_save_keeps_old_file(tmp_path):
    config = Config()
    path = tmp_path / format_name(config, 1, 0.5)
    checkpoint.save_atomic(_state(config, 1), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        checkpoint.save_atomic({"unpicklable": lambda: None}, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_prune_keeps_latest_and_best(tmp_path):
    config = Config()
    accuracies = {1: 0.2, 2: 0.6, 3: 0.4, 4: 0.6, 5: 0.3}
    for epoch, acc in accuracies.items():
        (tmp_path / format_name(config, epoch, acc)).write_bytes(b"x")
    checkpoint.prune_checkpoints(tmp_path, config)
    kept = [parsed.epoch for parsed, _ in checkpoint.list_checkpoints(tmp_path, config)]
    assert kept == [2, 5]  # best (earliest of the tie) and latest


def test_prune_never_keeps_diverged_as_best(tmp_path):
    config = Config()
    (tmp_path / format_name(config, 1, 0.1)).write_bytes(b"x")
    (tmp_path / format_name(config, 2, 0.3)).write_bytes(b"x")
    (tmp_path / format_name(config, 3, None)).write_bytes(b"x")
    checkpoint.prune_checkpoints(tmp_path, config)
    kept = [parsed.epoch for parsed, _ in checkpoint.list_checkpoints(tmp_path, config)]
    assert kept == [2, 3]


def _hold_lock(folder, ready, release):
    lock = checkpoint.ConfigLock(folder, Config())
    lock.acquire()
    ready.set()
    release.wait(30)
    lock.release()


def test_lock_excludes_second_holder(tmp_path):
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        lock = checkpoint.ConfigLock(tmp_path, Config())
        with pytest.raises(checkpoint.LockTimeout, match=str(holder.pid)):
            lock.acquire(timeout=0.3)
    finally:
        release.set()
        holder.join(30)
    lock.acquire(timeout=5)
    lock.release()


def test_lock_freed_when_holder_killed(tmp_path):
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, 9)
    holder.join(30)
    lock = checkpoint.ConfigLock(tmp_path, Config())
    started = time.monotonic()
    lock.acquire(timeout=5)
    lock.release()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("field, value", [
    ("lr", 0.0), ("lr", -1.0), ("lr", math.nan), ("lr", math.inf), ("lr_decay", 1.5), ("lr_step", 0),
    ("momentum", 1.0), ("weight_decay", -1e-4), ("batch_size", 0), ("batch_size", 2.5), ("seed", -1),
    ("val_fraction", 0.0), ("val_fraction", 1.0), ("width", 0.0), ("batch_size", True),
])
def test_check_value_rejects(field, value):
    assert checkpoint.check_value(field, value) is not None


@pytest.mark.parametrize("field, value", [
    ("lr", 0.4), ("lr", 3), ("lr_decay", 0.0), ("lr_decay", 1.0), ("lr_step", 1), ("momentum", 0.0),
    ("weight_decay", 0.0), ("batch_size", 1), ("seed", 0), ("val_fraction", 0.5), ("width", 0.25),
])
def test_check_value_accepts(field, value):
    assert checkpoint.check_value(field, value) is None


# ---------------------------------------------------------------- property-based round trip

positive = st.floats(min_value=0.0, max_value=1e300, exclude_min=True, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0.0, max_value=1.0)
configs = st.builds(
    Config,
    dataset=st.sampled_from(["cifar10", "cifar100"]),
    model=st.from_regex(r"[a-z][a-z0-9]{0,12}", fullmatch=True),
    width=positive,
    lr=positive,
    lr_decay=unit,
    lr_step=st.integers(min_value=1, max_value=2**63 - 1),
    momentum=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    weight_decay=st.floats(min_value=0.0, max_value=1e300),
    batch_size=st.integers(min_value=1, max_value=2**31),
    seed=st.integers(min_value=0, max_value=2**63 - 1),
    val_fraction=st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True),
)


@settings(max_examples=500, deadline=None)
@given(config=configs, epoch=st.integers(min_value=0, max_value=10**7), acc=st.one_of(st.none(), unit))
def test_round_trip_over_whole_ranges(config, epoch, acc):
    acc = None if acc is None else checkpoint.round_accuracy(acc)
    name = format_name(config, epoch, acc)
    parsed = parse_name(name)
    assert parsed is not None, name
    assert parsed.config == config
    assert parsed.epoch == epoch
    assert parsed.val_acc == acc
    assert format_name(parsed.config, parsed.epoch, parsed.val_acc) == name


@settings(max_examples=300, deadline=None)
@given(first=configs, second=configs)
def test_distinct_configs_distinct_names(first, second):
    assert (format_name(first, 1, 0.5) == format_name(second, 1, 0.5)) == (first == second)


def test_stale_temporaries_of_other_configs_kept(tmp_path):
    config = Config()
    own = tmp_path / ("." + format_name(config, 1, 0.5) + checkpoint.TEMP_MARKER + "123")
    own_history = tmp_path / ("." + checkpoint.history_name(config) + checkpoint.TEMP_MARKER + "123")
    sibling = tmp_path / ("." + format_name(Config(precision="bf16"), 1, 0.5) + checkpoint.TEMP_MARKER + "456")
    sibling_history = tmp_path / ("." + checkpoint.history_name(Config(split_seed=2)) + checkpoint.TEMP_MARKER + "4")
    for path in (own, own_history, sibling, sibling_history):
        path.write_bytes(b"partial")

    removed = checkpoint.remove_stale_temporaries(tmp_path, config)

    assert sorted(removed) == sorted([own, own_history])
    assert sibling.exists()
    assert sibling_history.exists()
    assert not own.exists()
