"""Trial results of a search: the append-only journal and the results read back from file names.

Every finished trial's result is appended to `results.jsonl` in the search folder, with fsync,
before the search acts on it. Promotions are a pure function of these results, so a restarted
search recomputes the same decisions. A result missing from the journal (say the driver died
between a trial's end and the append) is read from the trial's checkpoint file name instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import checkpoint

log = logging.getLogger(__name__)

# Statuses that depend on the configuration alone, and so are final for a (configuration, epochs).
# "oom" depends on the device's memory too, which a rerun of the same search does not change.
FINAL_STATUSES = ("ok", "diverged", "oom")


@dataclasses.dataclass(frozen=True)
class TrialResult:
    stem: str  # checkpoint.config_stem of the configuration
    epochs: int  # epochs the trial was asked to reach
    status: str  # ok, diverged, oom (out of memory), failed or timeout
    val_acc: float | None = None  # rounded as in file names; None unless status is ok
    val_loss: float | None = None
    checkpoint: str | None = None
    epochs_trained: int = 0  # epochs this trial's train.py run trained itself
    seconds: float = 0.0
    message: str = ""
    started: float = 0.0  # Unix time at which the trial's process started; 0 for results read back

    @property
    def score(self) -> float | None:
        return self.val_acc if self.status == "ok" else None


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.results: dict[tuple[str, int], TrialResult] = {}
        self._read()

    def _read(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        for number, line in enumerate(lines, 1):
            try:
                result = TrialResult(**json.loads(line))
            except (ValueError, TypeError) as error:
                # A driver killed mid-append leaves a partial last line; that trial simply reruns.
                log.warning("ignoring unreadable line %d of %s (%s)", number, self.path, error)
                continue
            self.results[(result.stem, result.epochs)] = result

    def get(self, stem: str, epochs: int) -> TrialResult | None:
        return self.results.get((stem, epochs))

    def append(self, result: TrialResult) -> None:
        if result.status not in FINAL_STATUSES:
            raise ValueError(f"only final results are journaled, got status {result.status!r}")
        with open(self.path, "a") as file:
            file.write(json.dumps(dataclasses.asdict(result)) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self.results[(result.stem, result.epochs)] = result


def result_from_names(scratch: Path, config: checkpoint.Config, epochs: int) -> TrialResult | None:
    """Return the result of training `config` to `epochs` if its checkpoint names already show it.

    That is a checkpoint at exactly `epochs`, or one that diverged at or before it. Nothing is loaded.
    """
    stem = checkpoint.config_stem(config)
    for parsed, path in checkpoint.list_checkpoints(checkpoint.config_folder(scratch, config), config):
        if parsed.diverged and parsed.epoch <= epochs:
            return TrialResult(stem=stem, epochs=epochs, status="diverged", checkpoint=str(path))
        if not parsed.diverged and parsed.epoch == epochs:
            return TrialResult(stem=stem, epochs=epochs, status="ok", val_acc=parsed.val_acc, checkpoint=str(path))
    return None
