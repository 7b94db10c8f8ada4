"""The Hyperband search loop: brackets of rounds, each round a batch of trials run in slots.

A trial is "train configuration C until it has completed r epochs", one run of train.py. The search
keeps no state of its own beyond the journal of results. A restarted search draws the same
configurations and takes every finished result from the journal or the checkpoint names. It
launches train.py only for the rest, which resume from their checkpoints.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import checkpoint
import plan
from journal import FINAL_STATUSES, Journal, TrialResult, result_from_names
from launcher import LocalLauncher, RunningTrial, Slot

log = logging.getLogger(__name__)

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
# How a trial's end is classified. A bad configuration ranks last and the search goes on. A
# failure of the infrastructure is no fault of the configuration, so the trial is retried from
# its checkpoint a bounded number of times, then the search stops, so that a full disk never
# turns into a leaderboard of failed configurations. A fatal failure stops the search at once,
# because no rerun can fix it.
FATAL_EXIT_CODES = {
    checkpoint.EXIT_USAGE: "train.py rejected its arguments",
    checkpoint.EXIT_UNUSABLE_CHECKPOINTS: "a configuration's checkpoints are unusable",
}
INFRASTRUCTURE_EXIT_CODES = {
    checkpoint.EXIT_DATA_MISSING: "the dataset is missing",
    checkpoint.EXIT_SAVE_FAILED: "saving a checkpoint failed",
    checkpoint.EXIT_LOCK_TIMEOUT: "another process held the configuration's lock",
}
BAD_CONFIGURATION_EXIT_CODES = {
    checkpoint.EXIT_OUT_OF_MEMORY: "oom",
}


class SearchError(Exception):
    """A failure that stops the whole search, as opposed to one bad configuration."""


class InfrastructureFailure(Exception):
    """A trial ended for a reason outside its configuration, such as a full disk or a kill signal."""


@dataclasses.dataclass(frozen=True)
class Trial:
    config: checkpoint.Config
    epochs: int  # total epochs to reach
    previous_epochs: int  # epochs the configuration had completed before this round

    @property
    def stem(self) -> str:
        return checkpoint.config_stem(self.config)


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    """A finished round of one bracket: its trials, their results and the trials it promoted."""

    bracket: int  # s of the bracket
    index: int  # i, the round's position in its bracket
    trials: list[Trial]
    results: list[TrialResult]  # in the order of `trials`
    kept: list[Trial]  # promoted to the next round, best first; empty after the bracket's last round


@dataclasses.dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    config: checkpoint.Config
    result: TrialResult


def train_arguments(config: checkpoint.Config, epochs: int, scratch: Path, data_dir: Path | None) -> list[str]:
    """Build the train.py argument list that trains `config` to `epochs`, never a shell string."""
    argv = [sys.executable, str(TRAIN_SCRIPT), "--dataset", config.dataset, "--model", config.model]
    for field in dataclasses.fields(config):
        if field.name not in ("dataset", "model"):
            argv += [f"--{field.name.replace('_', '-')}", checkpoint.format_number(getattr(config, field.name))]
    argv += ["--epochs", str(epochs), "--scratch", str(scratch)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    return argv


class Search:
    def __init__(self, brackets: list[plan.Bracket], configs: list[list[checkpoint.Config]], eta: int,
                 scratch: Path, data_dir: Path | None, folder: Path, slots: list[Slot],
                 launcher: LocalLauncher | None = None, trial_timeout: float | None = None,
                 on_result: Callable[[Trial, TrialResult, bool], None] | None = None, poll_seconds: float = 0.05,
                 retries: int = 2, on_round: Callable[[RoundOutcome], None] | None = None):
        self.brackets = brackets
        self.configs = configs
        self.eta = eta
        self.scratch = Path(scratch)
        self.data_dir = data_dir
        self.folder = Path(folder)
        self.slots = slots
        self.launcher = launcher or LocalLauncher()
        self.trial_timeout = trial_timeout
        # Called with each trial's result, and whether that came from an earlier run of the search.
        self.on_result = on_result or (lambda trial, result, reused: None)
        # Called after each round's promotions are chosen, before the next round starts.
        self.on_round = on_round or (lambda outcome: None)
        self.poll_seconds = poll_seconds
        self.retries = retries
        self.logs = self.folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.folder / "results.jsonl")
        self.final: dict[str, tuple[checkpoint.Config, TrialResult, int]] = {}  # stem -> last result

    # ------------------------------------------------------------ brackets and rounds

    def run(self) -> list[LeaderboardRow]:
        """Run every bracket, most exploratory first, and return the leaderboard."""
        order = 0
        for bracket, configs in zip(self.brackets, self.configs):
            log.info("bracket s=%d: %d configurations", bracket.s, len(configs))
            alive = list(range(len(configs)))
            previous_epochs = 0
            for index, round_ in enumerate(bracket.rounds):
                trials = [Trial(configs[k], round_.epochs, previous_epochs) for k in alive]
                results = self.run_round(trials)
                for trial, result in zip(trials, results):
                    self.final[trial.stem] = (trial.config, result, order)
                    order += 1
                # Keep the best floor(n_i / eta); the last round keeps none.
                keep = len(alive) // self.eta if index + 1 < len(bracket.rounds) else 0
                chosen = plan.select_best([result.score for result in results], keep)
                self.on_round(RoundOutcome(bracket.s, index, trials, results, [trials[j] for j in chosen]))
                alive = [alive[j] for j in chosen]
                previous_epochs = round_.epochs
        return self.leaderboard()

    def run_round(self, trials: list[Trial]) -> list[TrialResult]:
        """Run a round's trials, as many at once as there are slots, and return their results in order."""
        results: list[TrialResult | None] = [None] * len(trials)
        queue = collections.deque()
        for index, trial in enumerate(trials):
            known = self.journal.get(trial.stem, trial.epochs) or result_from_names(self.scratch, trial.config,
                                                                                   trial.epochs)
            if known is not None:
                if self.journal.get(trial.stem, trial.epochs) is None:
                    self.journal.append(known)
                results[index] = known
                self.on_result(trial, known, True)
            else:
                queue.append(index)

        free = list(self.slots)
        running: dict[int, tuple[RunningTrial, int]] = {}  # trial index -> (process, stdout offset)
        failures = collections.Counter()  # trial index -> infrastructure failures so far
        try:
            while queue or running:
                while queue and free:
                    index = queue.popleft()
                    running[index] = self._start(trials[index], free.pop(0))
                for index in list(running):
                    try:
                        result = self._check(trials[index], *running[index])
                    except InfrastructureFailure as failure:
                        process, _ = running.pop(index)
                        free.append(process.slot)
                        failures[index] += 1
                        if failures[index] > self.retries:
                            raise SearchError(f"{failure}; it persisted through {self.retries} retries, so the "
                                              f"search stops. Fix the cause, then rerun the same command.") from None
                        log.warning("%s; retrying from the checkpoint (retry %d of %d)", failure, failures[index],
                                    self.retries)
                        queue.appendleft(index)
                        continue
                    if result is None:
                        continue
                    process, _ = running.pop(index)
                    free.append(process.slot)
                    results[index] = result
                    if result.status in FINAL_STATUSES:
                        self.journal.append(result)
                    self.on_result(trials[index], result, False)
                if running:
                    time.sleep(self.poll_seconds)
        finally:
            # Reached on SIGTERM, Ctrl-C or a fatal trial failure: no trial may outlive the search.
            self.launcher.stop([process for process, _ in running.values()])
        return results

    # ------------------------------------------------------------ one trial

    def _paths(self, trial: Trial) -> tuple[Path, Path]:
        return trial_log_paths(self.logs, trial.stem, trial.epochs)

    def _start(self, trial: Trial, slot: Slot) -> tuple[RunningTrial, int]:
        stdout_path, stderr_path = self._paths(trial)
        offset = stdout_path.stat().st_size if stdout_path.exists() else 0
        argv = train_arguments(trial.config, trial.epochs, self.scratch, self.data_dir)
        log.debug("starting %s to %d epochs on %s", trial.stem, trial.epochs, slot.name)
        return self.launcher.start(argv, slot, stdout_path, stderr_path), offset

    def _check(self, trial: Trial, process: RunningTrial, offset: int) -> TrialResult | None:
        """Return the trial's result once it has ended, stopping it when it runs past the timeout."""
        code = self.launcher.poll(process)
        seconds = time.monotonic() - process.started
        if code is None:
            if self.trial_timeout is not None and seconds > self.trial_timeout:
                self.launcher.kill(process)
                log.warning("%s timed out after %.0f s; ranked last", trial.stem, seconds)
                return TrialResult(trial.stem, trial.epochs, "timeout", seconds=seconds,
                                   message=f"timed out after {self.trial_timeout:g} s")
            return None

        stdout_path, stderr_path = self._paths(trial)
        if code in FATAL_EXIT_CODES:
            raise SearchError(f"{FATAL_EXIT_CODES[code]} (exit code {code}) for {trial.stem}: "
                              f"{last_line(stderr_path)} (log: {stderr_path})")
        if code in INFRASTRUCTURE_EXIT_CODES or code < 0:
            cause = INFRASTRUCTURE_EXIT_CODES.get(code) or f"killed by signal {-code}"
            raise InfrastructureFailure(f"{trial.stem} to {trial.epochs} epochs: {cause} "
                                        f"({last_line(stderr_path)}; log: {stderr_path})")
        if code in BAD_CONFIGURATION_EXIT_CODES:
            log.warning("%s ran out of memory; ranked last (log: %s)", trial.stem, stderr_path)
            return TrialResult(trial.stem, trial.epochs, BAD_CONFIGURATION_EXIT_CODES[code], seconds=seconds,
                               message=last_line(stderr_path))
        line = last_line(stdout_path, offset)
        if code == 0:
            try:
                reported = json.loads(line)
                status = reported["status"]
                val_acc = checkpoint.round_accuracy(reported["val_acc"]) if status == "ok" else None
                return TrialResult(trial.stem, trial.epochs, status, val_acc=val_acc,
                                   val_loss=reported.get("val_loss"), checkpoint=reported.get("checkpoint"),
                                   epochs_trained=reported.get("epochs_trained", 0), seconds=seconds)
            except (ValueError, KeyError, TypeError) as error:
                message = f"exit code 0 but no result line ({error})"
        else:
            message = f"exit code {code}: {last_line(stderr_path)}"
        log.warning("%s failed to reach %d epochs: %s (log: %s); ranked last", trial.stem, trial.epochs,
                    message, stderr_path)
        return TrialResult(trial.stem, trial.epochs, "failed", seconds=seconds, message=message)

    # ------------------------------------------------------------ leaderboard

    def leaderboard(self) -> list[LeaderboardRow]:
        """Rank every configuration by its last result, with `rank_results`."""
        return rank_results(list(self.final.values()))


def rank_results(entries: list[tuple[checkpoint.Config, TrialResult, int]]) -> list[LeaderboardRow]:
    """Rank configurations by their last result: valid scores first, higher better.

    Each entry is (configuration, last result, order of that result in the search). Ties go to more
    epochs, then to the lower order.
    """
    def rank_key(entry):
        config, result, order = entry
        score = result.score
        return (score is None, -(score or 0.0), -result.epochs, order)

    entries = sorted(entries, key=rank_key)
    return [LeaderboardRow(rank, config, result) for rank, (config, result, _) in enumerate(entries, 1)]


def trial_log_paths(logs: Path, stem: str, epochs: int) -> tuple[Path, Path]:
    """Return the files in `logs` that receive the stdout and the stderr of the trial training `stem` to `epochs`."""
    # Not Path.with_suffix: the stem contains dots ("val0.1"), which it would cut at.
    base = f"{stem}_ep{epochs:04d}"
    return logs / f"{base}.out", logs / f"{base}.log"


def last_line(path: Path, offset: int = 0, window: int = 65536) -> str:
    """Return the last non-empty line written to `path` after byte `offset`, or '' if none.

    Only the last `window` bytes are read, so a very talkative child's log costs no more.
    """
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(offset, size - window))
            tail = file.read()
    except OSError:
        return ""
    lines = [line for line in tail.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
