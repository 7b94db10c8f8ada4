"""The rounds that a search has finished, recorded in rounds.json in the search folder.

The driver records each round once it has chosen the round's promotions and before the next round
starts: every trial's result, failed and timed-out trials included, and the configurations kept.
The plots and the report read this file to tell which configurations are still in the running,
also while the search runs and after it was killed. The journal (results.jsonl) contains final
results only, so it cannot show that a round ended with a failed trial, but this file can.

A restarted search records its rounds again as it replays them, so the file describes the latest
run of the search. The file is rewritten whole and atomically each time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import checkpoint
from journal import TrialResult

log = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    bracket: int  # s of the bracket
    index: int  # i, the round's position in its bracket
    epochs: int  # r_i, the epochs every trial of the round trained to
    results: tuple[TrialResult, ...]  # one per trial, in the order the trials ran
    kept: tuple[str, ...]  # config stems promoted to the next round, best first


def read_rounds(folder: Path) -> dict[tuple[int, int], RoundRecord]:
    """Return the recorded rounds of the search in `folder`, keyed by (bracket s, round index).

    A missing file gives no rounds. An unreadable one does too, with a warning that names it,
    because the next finished round rewrites it.
    """
    path = Path(folder) / ROUNDS_FILE
    try:
        payload = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable %s (%s)", path, error)
        return {}
    try:
        if payload["format_version"] != FORMAT_VERSION:
            raise ValueError(f"format version {payload['format_version']}, expected {FORMAT_VERSION}")
        records = [RoundRecord(bracket=item["bracket"], index=item["index"], epochs=item["epochs"],
                               results=tuple(TrialResult(**result) for result in item["results"]),
                               kept=tuple(item["kept"]))
                   for item in payload["rounds"]]
    except (KeyError, TypeError, ValueError) as error:
        log.warning("ignoring %s, which is not a rounds file of this version (%s)", path, error)
        return {}
    return {(record.bracket, record.index): record for record in records}


def record_round(folder: Path, record: RoundRecord) -> None:
    """Add `record` to the search's rounds file, replacing an earlier record of the same round.

    Raises OSError when the file cannot be written; the previous file, if any, stays intact.
    """
    records = read_rounds(folder)
    records[(record.bracket, record.index)] = record
    payload = {
        "format_version": FORMAT_VERSION,
        "rounds": [dataclasses.asdict(records[key]) for key in sorted(records, key=lambda key: (-key[0], key[1]))],
    }
    checkpoint.write_atomic((json.dumps(payload, indent=1) + "\n").encode(), Path(folder) / ROUNDS_FILE)
