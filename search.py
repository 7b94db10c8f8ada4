"""The Hyperband search loop: brackets of rounds, each round a batch of trials run in slots.

A trial is "train configuration C until it has completed r epochs", one run of train.py. The search
keeps no state of its own beyond the journal of results. A restarted search draws the same
configurations and takes every finished result from the journal or the checkpoint names. It
launches train.py only for the rest, which resume from their checkpoints.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
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


@dataclasses.dataclass
class BracketProgress:
    """The state of one bracket: its configurations still in the running and its current round."""

    position: int  # index in the search's list of brackets, most exploratory first
    bracket: plan.Bracket
    configs: list[checkpoint.Config]
    alive: list[int]  # indices into `configs` of the current round's configurations
    round_index: int = 0
    trials: list[Trial] = dataclasses.field(default_factory=list)
    results: list[TrialResult | None] = dataclasses.field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.round_index == len(self.bracket.rounds)


@dataclasses.dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    config: checkpoint.Config
    result: TrialResult


def train_arguments(config: checkpoint.Config, epochs: int, scratch: Path, data_dir: Path | None) -> list[str]:
    """Build the train.py argument list that trains `config` to `epochs`, never a shell string."""
    argv = [sys.executable, str(TRAIN_SCRIPT), "--dataset", config.dataset, "--model", config.model]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in ("dataset", "model"):
            continue
        if field.name in checkpoint.OPTIONAL_NAME_KEYS and value == field.default:
            continue  # as in the checkpoint names, so that a default split or precision is not spelled out
        argv += [f"--{field.name.replace('_', '-')}", checkpoint.format_number(value)]
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
        # stem -> (config, result, position in plan order) of its result latest in plan order
        self.final: dict[str, tuple[checkpoint.Config, TrialResult, tuple[int, int, int]]] = {}

    # ------------------------------------------------------------ brackets and rounds

    def run(self) -> list[LeaderboardRow]:
        """Run every bracket and return the leaderboard.

        Brackets are independent, so they share the slots: a slot that the most exploratory
        bracket cannot fill, because its round has no trial left to start, takes a trial of the
        next bracket. Each bracket still runs its rounds in order and promotes by its own results
        alone, so the outcome is that of running the brackets one after another.
        """
        brackets = [BracketProgress(position, bracket, configs, alive=list(range(len(configs))))
                    for position, (bracket, configs) in enumerate(zip(self.brackets, self.configs))]
        queue: list[tuple[int, int, int]] = []  # heap of (bracket position, round index, trial index)
        for progress in brackets:
            log.info("bracket s=%d: %d configurations", progress.bracket.s, len(progress.configs))
            self._open_round(progress, queue)

        free = list(self.slots)
        running: dict[tuple[int, int], tuple[RunningTrial, int]] = {}  # (bracket, trial) -> (process, offset)
        failures = collections.Counter()  # (bracket, round, trial) -> infrastructure failures so far
        try:
            while True:
                # Close every round whose results are all in. The next round may be complete at once,
                # because an earlier run of the search may have trained it already.
                for progress in brackets:
                    while not progress.done and all(result is not None for result in progress.results):
                        self._close_round(progress, queue)
                if all(progress.done for progress in brackets):
                    break

                while queue and free:
                    position, _, index = heapq.heappop(queue)
                    running[(position, index)] = self._start(brackets[position].trials[index], free.pop(0))

                for position, index in list(running):
                    progress = brackets[position]
                    trial = progress.trials[index]
                    try:
                        result = self._check(trial, *running[(position, index)])
                    except InfrastructureFailure as failure:
                        process, _ = running.pop((position, index))
                        free.append(process.slot)
                        key = (position, progress.round_index, index)
                        failures[key] += 1
                        if failures[key] > self.retries:
                            raise SearchError(f"{failure}; it persisted through {self.retries} retries, so the "
                                              f"search stops. Fix the cause, then rerun the same command.") from None
                        log.warning("%s; retrying from the checkpoint (retry %d of %d)", failure, failures[key],
                                    self.retries)
                        heapq.heappush(queue, key)
                        continue
                    if result is None:
                        continue
                    process, _ = running.pop((position, index))
                    free.append(process.slot)
                    progress.results[index] = result
                    if result.status in FINAL_STATUSES:
                        self.journal.append(result)
                    self.on_result(trial, result, False)
                if running:
                    time.sleep(self.poll_seconds)
        finally:
            # Reached on SIGTERM, Ctrl-C or a fatal trial failure: no trial may outlive the search.
            self.launcher.stop([process for process, _ in running.values()])
        return self.leaderboard()

    def _open_round(self, progress: BracketProgress, queue: list[tuple[int, int, int]]) -> None:
        """Set up the bracket's next round: take known results, queue the other trials."""
        rounds = progress.bracket.rounds
        previous_epochs = rounds[progress.round_index - 1].epochs if progress.round_index else 0
        epochs = rounds[progress.round_index].epochs
        progress.trials = [Trial(progress.configs[k], epochs, previous_epochs) for k in progress.alive]
        progress.results = [None] * len(progress.trials)
        for index, trial in enumerate(progress.trials):
            known = self.journal.get(trial.stem, trial.epochs) or result_from_names(self.scratch, trial.config,
                                                                                   trial.epochs)
            if known is None:
                heapq.heappush(queue, (progress.position, progress.round_index, index))
                continue
            if self.journal.get(trial.stem, trial.epochs) is None:
                self.journal.append(known)
            progress.results[index] = known
            self.on_result(trial, known, True)

    def _close_round(self, progress: BracketProgress, queue: list[tuple[int, int, int]]) -> None:
        """Record the finished round, promote the best floor(n_i / eta) and open the next round."""
        for index, (trial, result) in enumerate(zip(progress.trials, progress.results)):
            order = (progress.position, progress.round_index, index)
            # A configuration drawn in two brackets has one checkpoint folder, so its result latest in
            # plan order counts, whichever bracket finished first.
            if trial.stem not in self.final or self.final[trial.stem][2] < order:
                self.final[trial.stem] = (trial.config, result, order)
        last = progress.round_index + 1 == len(progress.bracket.rounds)
        keep = 0 if last else len(progress.alive) // self.eta
        chosen = plan.select_best([result.score for result in progress.results], keep)
        self.on_round(RoundOutcome(progress.bracket.s, progress.round_index, progress.trials, progress.results,
                                   [progress.trials[j] for j in chosen]))
        progress.alive = [progress.alive[j] for j in chosen]
        progress.round_index += 1
        if not progress.done:
            self._open_round(progress, queue)

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
        started = time.time() - seconds
        if code is None:
            if self.trial_timeout is not None and seconds > self.trial_timeout:
                self.launcher.kill(process)
                log.warning("%s timed out after %.0f s; ranked last", trial.stem, seconds)
                return TrialResult(trial.stem, trial.epochs, "timeout", seconds=seconds, started=started,
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
                               started=started,
                               message=last_line(stderr_path))
        line = last_line(stdout_path, offset)
        if code == 0:
            try:
                reported = json.loads(line)
                status = reported["status"]
                val_acc = checkpoint.round_accuracy(reported["val_acc"]) if status == "ok" else None
                return TrialResult(trial.stem, trial.epochs, status, val_acc=val_acc,
                                   val_loss=reported.get("val_loss"), checkpoint=reported.get("checkpoint"),
                                   epochs_trained=reported.get("epochs_trained", 0), seconds=seconds,
                                   started=started)
            except (ValueError, KeyError, TypeError) as error:
                message = f"exit code 0 but no result line ({error})"
        else:
            message = f"exit code {code}: {last_line(stderr_path)}"
        log.warning("%s failed to reach %d epochs: %s (log: %s); ranked last", trial.stem, trial.epochs,
                    message, stderr_path)
        return TrialResult(trial.stem, trial.epochs, "failed", seconds=seconds, message=message,
                           started=started)

    # ------------------------------------------------------------ leaderboard

    def leaderboard(self) -> list[LeaderboardRow]:
        """Rank every configuration by its last result, with `rank_results`."""
        return rank_results(list(self.final.values()))


def rank_results(entries: list[tuple[checkpoint.Config, TrialResult, int | tuple]]) -> list[LeaderboardRow]:
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
