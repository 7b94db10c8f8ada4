"""History files: each configuration's per-epoch metrics as JSON, beside its checkpoints.

train.py writes `<config stem>.history.json` (see `checkpoint.history_name`) after every saved
epoch. It contains the configuration, the status and the checkpoint's `history` list, one record per
completed epoch, so that the search driver, the plots and the report can read the curves without
importing torch. The checkpoint stays the source of truth: when train.py finds that the file differs
from the checkpoint it resumes from, for example after a kill between the two writes, it rewrites it.

A loss that was not finite is stored as null, so that the file is standard JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import checkpoint

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class UnreadableHistory(Exception):
    """A history file that is not valid JSON or does not contain the expected configuration."""


@dataclasses.dataclass(frozen=True)
class History:
    config: checkpoint.Config
    status: str  # ok or diverged, as in the checkpoint
    epoch: int  # completed epochs
    records: list[dict]  # one per completed epoch; see train.py for the keys


def history_path(folder: Path, config: checkpoint.Config) -> Path:
    return Path(folder) / checkpoint.history_name(config)


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode_history(state: dict) -> bytes:
    """Serialise the configuration, status, epoch and history of checkpoint `state` as JSON."""
    records = [{key: _finite_or_none(value) for key, value in record.items()} for record in state["history"]]
    payload = {
        "format_version": FORMAT_VERSION,
        "config": state["config"],
        "status": state["status"],
        "epoch": state["epoch"],
        "history": records,
    }
    return (json.dumps(payload, allow_nan=False) + "\n").encode()


def write_history(folder: Path, state: dict) -> bool:
    """Write the history file of checkpoint `state` unless it already has these contents.

    Returns whether the file was written. Raises OSError when the write fails; the previous file,
    if any, stays intact.
    """
    config = checkpoint.Config(**state["config"])
    path = history_path(folder, config)
    data = encode_history(state)
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    checkpoint.write_atomic(data, path)
    return True


def read_history(path: Path, config: checkpoint.Config) -> History:
    """Read the history file at `path`; raise UnreadableHistory unless it belongs to `config`."""
    try:
        payload = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise UnreadableHistory(f"{path}: cannot be read ({error})") from error
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise UnreadableHistory(f"{path}: not a history file of format version {FORMAT_VERSION}")
    if payload.get("config") != config.to_dict():
        raise UnreadableHistory(f"{path}: contains configuration {payload.get('config')}, not the one its name gives")
    records = payload.get("history")
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("epoch"), int)
                                                for r in records):
        raise UnreadableHistory(f"{path}: its history is not a list of epoch records")
    return History(config=config, status=str(payload.get("status")), epoch=len(records), records=records)


def load_history(scratch: Path, config: checkpoint.Config) -> History | None:
    """Return `config`'s history, or None when it has no history file or the file is unreadable.

    An unreadable file is skipped with a warning that names it.
    """
    path = history_path(checkpoint.config_folder(scratch, config), config)
    if not path.exists():
        return None
    try:
        return read_history(path, config)
    except UnreadableHistory as error:
        log.warning("skipping history file: %s", error)
        return None
