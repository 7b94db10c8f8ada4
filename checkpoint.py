"""Checkpoint files of one training configuration: names, atomic saves, loading and the lock.

A checkpoint's file name carries the whole configuration, the number of completed epochs and the
validation accuracy, so that a search and a person can compare runs by listing files:

    cifar10_vgg11_w0.25_lr0.1_lrd0.5_lrs3_mom0.9_wd0.0005_bs128_seed0_val0.1_ep0003_acc0.4512.pt

`format_name` and `parse_name` are the only code that builds or reads these names. Floats keep
`SIGNIFICANT_DIGITS` significant digits and the accuracy keeps `ACCURACY_DECIMALS` decimals. A
`Config` rounds its values on construction, so parsing a formatted name returns an equal `Config`.

`epoch` always counts completed epochs: a checkpoint with epoch 3 has trained epochs 0, 1 and 2.

The search driver imports this module for names alone and must not pay for `import torch`, so
torch is imported inside the functions that save and load.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import logging
import math
import os
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)

SIGNIFICANT_DIGITS = 4
ACCURACY_DECIMALS = 4
FORMAT_VERSION = 1
SUFFIX = ".pt"
HISTORY_SUFFIX = ".history.json"
TEST_RESULT_SUFFIX = ".test.json"
TEST_RESULT_FORMAT_VERSION = 1
TEMP_MARKER = ".tmp-"

# Exit codes of train.py that the search driver reads.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNUSABLE_CHECKPOINTS = 3
EXIT_DATA_MISSING = 4
EXIT_SAVE_FAILED = 5
EXIT_OUT_OF_MEMORY = 6
EXIT_LOCK_TIMEOUT = 75


def round_significant(value: float) -> float:
    """Round `value` to the significant digits that file names keep."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def round_accuracy(value: float) -> float:
    """Round an accuracy in [0, 1] to the decimals that file names keep."""
    return float(f"{value:.{ACCURACY_DECIMALS}f}")


@dataclasses.dataclass(frozen=True)
class Config:
    """The hyperparameters that decide what one training run computes.

    Everything that changes the result is here and in the file name. The number of epochs to
    reach, the device, the threads and the output folder do not change it, so they are not here.
    """

    dataset: str = "cifar10"
    model: str = "vgg11"
    width: float = 1.0
    lr: float = 0.1
    lr_decay: float = 0.1
    lr_step: int = 30
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0  # 0 is the standard train/validation split; others draw a split from this seed
    precision: str = "fp32"  # "bf16" trains under autocast; fp32 keeps results comparable

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float":
                object.__setattr__(self, field.name, round_significant(float(value)))
            elif field.type == "int":
                object.__setattr__(self, field.name, int(value))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRECISIONS = ("fp32", "bf16")

# Valid values of each hyperparameter, shared by train.py's flags and the search-space files.
RULES = {
    "width": (lambda v: 0 < v, "a number > 0"),
    "lr": (lambda v: 0 < v, "a number > 0"),
    "lr_decay": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lr_step": (lambda v: v >= 1, "an integer >= 1"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "val_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "split_seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "precision": (lambda v: v in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
}


def check_value(field: str, value) -> str | None:
    """Return the rule that `value` breaks as hyperparameter `field`, or None when it is valid."""
    predicate, rule = RULES[field]
    expected = Config.__dataclass_fields__[field].type
    if expected == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return rule
    if expected == "str" and not isinstance(value, str):
        return rule
    if expected == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                or not math.isfinite(value)):
        return rule
    return None if predicate(value) else rule


# Short keys of the file name, in order. Values never contain "_", so "_" separates fields.
NAME_KEYS = {
    "width": "w",
    "lr": "lr",
    "lr_decay": "lrd",
    "lr_step": "lrs",
    "momentum": "mom",
    "weight_decay": "wd",
    "batch_size": "bs",
    "seed": "seed",
    "val_fraction": "val",
}
# Fields that appear in the name only when they differ from their default, so that names of
# runs with the standard split in fp32 stay short. Their values never contain "_" either.
OPTIONAL_NAME_KEYS = {
    "split_seed": "split",
    "precision": "",
}
_NUMBER = r"[-+0-9.e]+|inf|nan"
_NAME_PATTERN = re.compile(
    r"(?P<dataset>[a-z0-9]+)_(?P<model>[a-z0-9]+)_"
    + "_".join(f"{key}(?P<{field}>{_NUMBER})" for field, key in NAME_KEYS.items())
    + r"(?:_split(?P<split_seed>\d+))?"
    + r"(?:_(?P<precision>%s))?" % "|".join(p for p in PRECISIONS if p != "fp32")
    + r"_ep(?P<epoch>\d{4,})_(?:acc(?P<acc>[01]\.\d{%d})|(?P<diverged>diverged))" % ACCURACY_DECIMALS
    + re.escape(SUFFIX)
)


def format_number(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return f"{value:.{SIGNIFICANT_DIGITS}g}"


def config_stem(config: Config) -> str:
    """Return the part of a checkpoint name that identifies the configuration."""
    fields = [config.dataset, config.model]
    fields += [key + format_number(getattr(config, field)) for field, key in NAME_KEYS.items()]
    for field, key in OPTIONAL_NAME_KEYS.items():
        value = getattr(config, field)
        if value != Config.__dataclass_fields__[field].default:
            fields.append(key + format_number(value))
    return "_".join(fields)


def format_name(config: Config, epoch: int, val_acc: float | None) -> str:
    """Build the file name of `config`'s checkpoint after `epoch` completed epochs.

    `val_acc` None marks a run that diverged.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if val_acc is None:
        result = "diverged"
    else:
        if not 0.0 <= val_acc <= 1.0:
            raise ValueError(f"val_acc must be in [0, 1], got {val_acc}")
        result = f"acc{val_acc:.{ACCURACY_DECIMALS}f}"
    return f"{config_stem(config)}_ep{epoch:04d}_{result}{SUFFIX}"


def history_name(config: Config) -> str:
    """Build the name of `config`'s history file, a JSON file beside its checkpoints.

    The name never parses as a checkpoint name, so listing checkpoints skips it.
    """
    return config_stem(config) + HISTORY_SUFFIX


def test_result_name(config: Config, epoch: int) -> str:
    """Build the name of the JSON file that stores the test result of `config` after `epoch` epochs.

    train.py --test writes it beside the checkpoints. The name never parses as a checkpoint name.
    """
    return f"{config_stem(config)}_ep{epoch:04d}{TEST_RESULT_SUFFIX}"


def read_test_result(folder: Path, config: Config, epoch: int) -> dict | None:
    """Read the stored test result of `config` after `epoch` epochs, or return None when there is none.

    Raises UnusableCheckpoint when the file is not valid JSON or describes another run.
    """
    path = Path(folder) / test_result_name(config, epoch)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        stored = json.loads(text)
    except ValueError as error:
        raise UnusableCheckpoint(f"{path}: not valid JSON ({error})") from error
    expected = {"format_version": TEST_RESULT_FORMAT_VERSION, "config": config.to_dict(), "epoch": epoch}
    if not isinstance(stored, dict) or any(stored.get(key) != value for key, value in expected.items()):
        raise UnusableCheckpoint(f"{path}: not the test result of this configuration at epoch {epoch}")
    return stored


@dataclasses.dataclass(frozen=True)
class ParsedName:
    config: Config
    epoch: int
    val_acc: float | None  # None when the run diverged

    @property
    def diverged(self) -> bool:
        return self.val_acc is None


def parse_name(name: str) -> ParsedName | None:
    """Read a checkpoint file name built by `format_name`; return None for any other name."""
    match = _NAME_PATTERN.fullmatch(name)
    if match is None:
        return None
    values = {"dataset": match["dataset"], "model": match["model"]}
    try:
        for field in NAME_KEYS:
            text = match[field]
            values[field] = int(text) if Config.__dataclass_fields__[field].type == "int" else float(text)
    except ValueError:
        return None
    if match["split_seed"] is not None:
        values["split_seed"] = int(match["split_seed"])
    if match["precision"] is not None:
        values["precision"] = match["precision"]
    config = Config(**values)
    val_acc = None if match["diverged"] else float(match["acc"])
    # A name not in canonical form (say "lr0.10", or "split0" for the default split) parses to a
    # config whose own name differs. Accepting it would let two files claim one configuration.
    if format_name(config, int(match["epoch"]), val_acc) != name:
        return None
    return ParsedName(config, int(match["epoch"]), val_acc)


def resolve_scratch(flag: Path | None) -> tuple[Path, str]:
    """Return the scratch folder (--scratch, else $SCRATCH, else ./scratch) and where it came from."""
    if flag is not None:
        return Path(flag), "--scratch"
    if os.environ.get("SCRATCH"):
        return Path(os.environ["SCRATCH"]), "$SCRATCH"
    return Path("scratch"), "default ./scratch, since $SCRATCH is not set"


def config_folder(scratch: Path, config: Config) -> Path:
    return Path(scratch) / "checkpoints" / config.dataset / config.model


def list_checkpoints(folder: Path, config: Config) -> list[tuple[ParsedName, Path]]:
    """List `config`'s checkpoints in `folder`, oldest epoch first.

    Files whose names do not parse, or that belong to another configuration, are ignored.
    """
    stem = config_stem(config)
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.startswith(stem + "_"):
            continue
        parsed = parse_name(entry.name)
        if parsed is not None and parsed.config == config and entry.is_file():
            found.append((parsed, Path(entry.path)))
    found.sort(key=lambda item: item[0].epoch)
    return found


# ---------------------------------------------------------------- saving and loading


def save_atomic(state: dict, path: Path) -> None:
    """Save the checkpoint `state` to `path` with `write_atomic`."""
    import torch

    # Serialising to memory first means that a failed write raises OSError with its errno, where
    # torch.save to a file reports it as a RuntimeError without the cause (torch 2.14).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(buffer.getbuffer(), path)


def write_atomic(data: bytes, path: Path) -> None:
    """Write `data` to `path` so that the file is either complete or absent.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
    `path`. The folder is fsynced too, so that the rename survives a power loss. On any failure the
    temporary file is removed and the error is raised: an OSError for a failed write, such as
    ENOSPC or EFBIG.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")
    try:
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def remove_stale_temporaries(folder: Path, config: Config) -> list[Path]:
    """Delete temporary files that an interrupted save of `config` left behind; return their paths.

    Call this only while holding the configuration's lock, when no save of it can be under way.
    """
    removed = []
    stem = config_stem(config)
    for pattern in (f".{stem}_*{TEMP_MARKER}*", f".{history_name(config)}{TEMP_MARKER}*"):
        for path in Path(folder).glob(pattern):
            # The pattern also matches configurations whose names extend this stem (say with
            # "_bf16"); their saves run under their own locks, so only this configuration's go.
            target = path.name[1:path.name.rindex(TEMP_MARKER)]
            parsed = parse_name(target)
            if target != history_name(config) and (parsed is None or parsed.config != config):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class UnusableCheckpoint(Exception):
    """A checkpoint file that cannot be read, or whose contents do not match its name."""


def load_checkpoint(path: Path, config: Config) -> dict:
    """Load a checkpoint of `config` onto the CPU, with unpickling limited to plain values.

    Raises UnusableCheckpoint when the file is damaged, fails `weights_only` loading, or contains
    another configuration or format version.
    """
    import torch

    try:
        # mmap reads tensor data from the page cache as it is used instead of copying the whole
        # file first. Checkpoints are replaced atomically, never rewritten in place, so the mapped
        # file cannot change under the loaded tensors.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many types for damaged or hostile files
        raise UnusableCheckpoint(f"{path}: cannot be loaded ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UnusableCheckpoint(f"{path}: not a checkpoint of format version {FORMAT_VERSION}")
    if state.get("config") != config.to_dict():
        raise UnusableCheckpoint(f"{path}: contains configuration {state.get('config')}, not the one its name gives")
    return state


def prune_checkpoints(folder: Path, config: Config) -> None:
    """Delete `config`'s checkpoints other than the latest and the best.

    Call this only after the newest checkpoint is on disk. "Best" is the highest validation
    accuracy, the earlier epoch winning a tie; a diverged checkpoint is never best.
    """
    checkpoints = list_checkpoints(folder, config)
    if len(checkpoints) <= 2:
        return
    latest = checkpoints[-1]
    scored = [item for item in checkpoints if item[0].val_acc is not None]
    best = max(scored, key=lambda item: (item[0].val_acc, -item[0].epoch)) if scored else latest
    for parsed, path in checkpoints:
        if path not in (latest[1], best[1]):
            log.debug("deleting superseded checkpoint %s", path)
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- per-configuration lock


class LockTimeout(Exception):
    pass


class ConfigLock:
    """An exclusive lock on one configuration's checkpoints, held by one process at a time.

    It is an flock on a hidden file beside the checkpoints, so the kernel releases it when its
    holder dies, even by SIGKILL. The file contains the holder's process id, for messages only.
    """

    def __init__(self, folder: Path, config: Config):
        self.path = Path(folder) / f".{config_stem(config)}.lock"
        self._file = None

    def acquire(self, timeout: float | None = None, poll_seconds: float = 0.2) -> None:
        """Take the lock, waiting at most `timeout` seconds (None: without limit)."""
        self._file = open(self.path, "a+")
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self.holder()
                if deadline is not None and time.monotonic() >= deadline:
                    self._file.close()
                    self._file = None
                    raise LockTimeout(f"{self.path} is held by process {holder}") from None
                if not announced:
                    log.warning("waiting for process %s, which is training this configuration (lock %s)",
                                holder, self.path)
                    announced = True
                time.sleep(poll_seconds)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
