"""A search's report and plots, derived from the files it leaves on disk.

Everything here is read from files that survive a kill: the rounds file (rounds.json), the journal
(results.jsonl), the checkpoint names and the configurations' history files. So the report and the
plots can be redrawn at any time: by the driver after each round and at the end, or on demand with
`hyperband.py --report`, also while a search runs or after it was killed. Nothing here imports torch
or starts a trial.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import shlex
from pathlib import Path
from typing import Callable

import checkpoint
import history
import plan
import plots
import rounds
from journal import Journal, TrialResult, result_from_names
from search import LeaderboardRow, RoundOutcome, rank_results, train_arguments, trial_log_paths

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PLOTS_FOLDER = "plots"


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """A search's plan and configurations, which the driver derives from its flags without running anything."""

    folder: Path  # the search's folder, SCRATCH/searches/<name>
    scratch: Path
    data_dir: Path | None
    brackets: list[plan.Bracket]
    configs: list[list[checkpoint.Config]]  # per bracket, as drawn
    describe: Callable[[checkpoint.Config], str]  # the searched hyperparameters as flag=value pairs


# ---------------------------------------------------------------- what the search has done


@dataclasses.dataclass
class Member:
    """One drawn configuration of one bracket, and how far the search has taken it."""

    config: checkpoint.Config
    bracket: int  # s
    target: int | None = None  # epochs of the latest round it entered; None before its bracket starts
    result: TrialResult | None = None  # its latest result; None while that trial has not finished
    order: int = 0  # position of `result` among all results, as the driver numbers them for ties
    alive: bool = False  # in its bracket's latest round and not failed there

    @property
    def stem(self) -> str:
        return checkpoint.config_stem(self.config)


@dataclasses.dataclass
class RoundRun:
    planned: plan.Round
    members: list[Member]  # the configurations that entered this round; empty before it starts
    results: list[TrialResult | None]  # in the order of `members`; None while a trial runs
    finished: bool  # recorded in the rounds file


@dataclasses.dataclass
class Survey:
    rounds: list[list[RoundRun]]  # per bracket, per round
    members: list[Member]  # every drawn configuration, in the order the search runs them
    leaderboard: list[LeaderboardRow]
    histories: dict[str, history.History]  # config stem -> history, cut at the member's target epochs
    finished: bool


def survey(settings: SearchSettings) -> Survey:
    """Read what the search in `settings.folder` has done so far.

    Finished rounds come from the rounds file. In each bracket the first unfinished round is the
    one in progress (or where a killed search stopped): its results come from the journal and the
    checkpoint names, as a restarted search would find them. The bracket's later rounds have not
    started, because the driver runs each bracket's rounds in order, but all brackets at once.
    """
    recorded = rounds.read_rounds(settings.folder)
    journal = Journal(settings.folder / "results.jsonl")
    members: list[Member] = []
    runs: list[list[RoundRun]] = []
    order = 0
    every_bracket_finished = True
    for bracket, configs in zip(settings.brackets, settings.configs):
        started = True
        bracket_members = [Member(config, bracket.s) for config in configs]
        members += bracket_members
        entering = bracket_members
        bracket_runs = []
        for index, planned in enumerate(bracket.rounds):
            if not started:
                bracket_runs.append(RoundRun(planned, [], [], finished=False))
                continue
            for member in entering:
                member.target = planned.epochs
            record = recorded.get((bracket.s, index))
            if record is not None and [result.stem for result in record.results] == [m.stem for m in entering]:
                results = list(record.results)
                finished = True
            else:
                # A record for other configurations is left over from an earlier run, so it is ignored.
                results = [journal.get(m.stem, planned.epochs) or result_from_names(settings.scratch, m.config,
                                                                                     planned.epochs)
                           for m in entering]
                finished = False
            for member, result in zip(entering, results):
                if result is not None:
                    member.result, member.order = result, order
                order += 1
            bracket_runs.append(RoundRun(planned, entering, results, finished))
            if not finished:
                for member in entering:
                    member.alive = member.result is None or member.result.score is not None
                started = False
            elif index + 1 == len(bracket.rounds):
                for member in entering:
                    member.alive = member.result.score is not None
            else:
                by_stem = {member.stem: member for member in entering}
                entering = [by_stem[stem] for stem in record.kept if stem in by_stem]
        runs.append(bracket_runs)
        every_bracket_finished = every_bracket_finished and started

    # A configuration drawn in two brackets has one checkpoint folder, so, as in the driver, its last result counts.
    latest = {member.stem: member for member in members if member.target is not None}
    leaderboard = rank_results([(m.config, m.result, m.order) for m in latest.values() if m.result is not None])
    histories = {}
    for stem, member in latest.items():
        found = history.load_history(settings.scratch, member.config)
        if found is not None:
            # Epochs past the target were trained by someone else, such as a longer search or a person.
            records = [record for record in found.records if record["epoch"] <= member.target]
            histories[stem] = dataclasses.replace(found, records=records, epoch=len(records))
    return Survey(rounds=runs, members=members, leaderboard=leaderboard, histories=histories,
                  finished=every_bracket_finished)


# ---------------------------------------------------------------- plots


def plots_folder(settings: SearchSettings) -> Path:
    return settings.folder / PLOTS_FOLDER


def plot_curves(settings: SearchSettings, found: Survey) -> list[plots.Curve]:
    """Build one curve per configuration with a history: ranked ones best first, then those still running."""
    latest = {member.stem: member for member in found.members if member.target is not None}
    ranked = [checkpoint.config_stem(row.config) for row in found.leaderboard]
    pending = [stem for stem in latest if stem not in ranked]
    best = ranked[0] if ranked and found.leaderboard[0].result.score is not None else None
    curves = []
    for stem in ranked + pending:
        if stem not in found.histories:
            continue
        member = latest[stem]
        curves.append(plots.Curve(label=f"{settings.describe(member.config)}: {outcome(member.result)}",
                                  records=found.histories[stem].records, alive=member.alive, best=stem == best))
    return curves


def outcome(result: TrialResult | None) -> str:
    if result is None:
        return "running"
    if result.status == "ok":
        return f"{result.val_acc:.2%} after {count(result.epochs, 'epoch')}"
    return f"{result.status} at {count(result.epochs, 'epoch')}"


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def draw_search_plots(settings: SearchSettings, found: Survey) -> list[Path]:
    """Draw the search's plots into its plots folder; return the paths written, [] without matplotlib."""
    return plots.draw_plots(plot_curves(settings, found), plots_folder(settings), settings.folder.name)


def refresh_plots(settings: SearchSettings) -> list[Path]:
    """Redraw the plots from the search's files, warning instead of raising when a file cannot be written."""
    try:
        return draw_search_plots(settings, survey(settings))
    except OSError as error:
        log.warning("could not write the plots in %s: %s", plots_folder(settings), error.strerror or error)
        return []


class RoundRecorder:
    """The driver's callback after each round: record the round, then redraw the plots.

    Plots are redrawn only after a round that trained something, so a restarted search does not redraw
    them for every round it takes from the journal. A failure to write either file only warns, since
    the search itself does not depend on them.
    """

    def __init__(self, settings: SearchSettings):
        self.settings = settings
        self.trained = False

    def note_result(self, reused: bool) -> None:
        """Note a trial's result, and whether it came from an earlier run of the search."""
        self.trained = self.trained or not reused

    def __call__(self, outcome: RoundOutcome) -> None:
        # A round can have no trials, when every trial of the round before it failed.
        (bracket,) = [bracket for bracket in self.settings.brackets if bracket.s == outcome.bracket]
        record = rounds.RoundRecord(bracket=outcome.bracket, index=outcome.index,
                                    epochs=bracket.rounds[outcome.index].epochs, results=tuple(outcome.results),
                                    kept=tuple(trial.stem for trial in outcome.kept))
        try:
            rounds.record_round(self.settings.folder, record)
        except OSError as error:
            log.warning("could not record the round in %s: %s", self.settings.folder / rounds.ROUNDS_FILE,
                        error.strerror or error)
        if self.trained:
            self.trained = False
            refresh_plots(self.settings)


# ---------------------------------------------------------------- tables


def format_leaderboard(rows: list[LeaderboardRow], describe: Callable[[checkpoint.Config], str]) -> str:
    """Render the leaderboard as a fixed-width table, one configuration per line."""
    described = [describe(row.config) for row in rows]
    width = max([len("configuration")] + [len(text) for text in described])
    lines = [f"{'rank':>4}  {'epochs':>6}  {'val acc':>7}  {'status':<8}  {'configuration':<{width}}  checkpoint"]
    for row, description in zip(rows, described):
        acc = f"{row.result.val_acc:.4f}" if row.result.val_acc is not None else "-"
        name = Path(row.result.checkpoint).name if row.result.checkpoint else "-"
        lines.append(f"{row.rank:>4}  {row.result.epochs:>6}  {acc:>7}  {row.result.status:<8}  "
                     f"{description:<{width}}  {name}")
    return "\n".join(lines)


def format_as_run(brackets: list[plan.Bracket], found: Survey, epochs_by_bracket: list[int]) -> str:
    """Render the bracket table as run: configurations x epochs of each round that started.

    A finished round's cell counts its trials that did not end ok, by status. A round in progress
    counts the trials done so far, and "-" marks a round not started.
    """
    width = max(len(bracket_runs) for bracket_runs in found.rounds)
    header = ["bracket"] + [f"round {i}" for i in range(width)] + ["epochs"]
    rows = []
    for bracket, bracket_runs, epochs in zip(brackets, found.rounds, epochs_by_bracket):
        cells = [f"s={bracket.s}"] + [round_cell(run) for run in bracket_runs]
        cells += [""] * (width - len(bracket_runs))
        rows.append(cells + [str(epochs)])
    rows.append(["total"] + [""] * width + [str(sum(epochs_by_bracket))])
    widths = [max(len(row[c]) for row in [header] + rows) for c in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header] + rows)


def round_cell(run: RoundRun) -> str:
    if not run.members and not run.finished:
        return "-"
    cell = f"{len(run.members)} x {run.planned.epochs}"
    if not run.finished:
        done = sum(result is not None for result in run.results)
        return f"{cell} ({done} done)"
    statuses = collections.Counter(result.status for result in run.results if result.status != "ok")
    if statuses:
        cell += " (" + ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) + ")"
    return cell


# ---------------------------------------------------------------- the report


def reproduce_command(config: checkpoint.Config, epochs: int, scratch: Path, data_dir: Path | None) -> str:
    """Return the shell command that trains `config` to `epochs` with train.py, as the search did."""
    return shlex.join(["python", "train.py"] + train_arguments(config, epochs, scratch, data_dir)[2:])


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def render_report(settings: SearchSettings, found: Survey, plot_paths: list[Path]) -> str:
    """Render the report as Markdown: status, brackets, best configuration, leaderboard, time, failures, plots."""
    describe = settings.describe
    name = settings.folder.name
    lines = [f"# Hyperband search {name}", ""]

    # Status
    if found.finished:
        lines.append("Status: finished.")
    else:
        lines.append("Status: not finished, either running now or stopped. Run the same hyperband.py command, "
                     "without --report, to resume it.")
    lines.append("")

    # Brackets
    epochs_by_bracket = []
    for bracket_runs in found.rounds:
        members = {member.stem: member for run in bracket_runs for member in run.members}
        epochs_by_bracket.append(sum(len(found.histories[stem].records) for stem in members
                                     if stem in found.histories))
    lines += ["## Brackets", "", "As planned (configurations x epochs per round):", "", "```text",
              plan.format_plan(settings.brackets), "```", "",
              "As run (epochs: completed epochs of the bracket's configurations, from their history files):",
              "", "```text", format_as_run(settings.brackets, found, epochs_by_bracket), "```", ""]

    # Best configuration
    lines += ["## Best configuration", ""]
    best = found.leaderboard[0] if found.leaderboard and found.leaderboard[0].result.score is not None else None
    if best is None:
        lines += ["No configuration has a validation accuracy yet.", ""]
    else:
        lines += [f"{describe(best.config)}: validation accuracy {best.result.val_acc:.4f} after "
                  f"{count(best.result.epochs, 'epoch')}.", "", f"Checkpoint: `{best.result.checkpoint}`", "",
                  "Reproduce it:", "", "```bash",
                  reproduce_command(best.config, best.result.epochs, settings.scratch, settings.data_dir),
                  "```", ""]

    # Leaderboard
    lines += ["## Leaderboard", ""]
    if found.leaderboard:
        lines += ["```text", format_leaderboard(found.leaderboard, describe), "```", ""]
    else:
        lines += ["No trial has finished yet.", ""]

    # Time and epochs
    lines += ["## Time and epochs", ""] + time_lines(settings, found, epochs_by_bracket) + [""]

    # Failures
    lines += ["## Failures", ""] + failure_lines(settings, found) + [""]

    # Plots
    lines += ["## Plots", ""]
    if plot_paths:
        lines += [f"- `{path}`" for path in plot_paths]
    elif plots.matplotlib_missing():
        lines.append(f"None: matplotlib is not installed ({plots.INSTALL_HINT}).")
    else:
        lines.append("None yet: no configuration has completed an epoch.")
    return "\n".join(lines) + "\n"


def time_lines(settings: SearchSettings, found: Survey, epochs_by_bracket: list[int]) -> list[str]:
    planned = sum(bracket.epochs_with_reuse for bracket in settings.brackets)
    without_reuse = sum(bracket.epochs_without_reuse for bracket in settings.brackets)
    lines = [f"- Epochs completed: {sum(epochs_by_bracket)} of the {planned} planned "
             f"({without_reuse} if promoted configurations restarted from scratch)."]
    records = [record for found_history in found.histories.values() for record in found_history.records]
    timed = [record for record in records if isinstance(record.get("timestamp"), (int, float))
             and isinstance(record.get("epoch_seconds"), (int, float))]
    if timed:
        start = min(record["timestamp"] - record["epoch_seconds"] for record in timed)
        end = max(record["timestamp"] for record in timed)
        lines.append(f"- Wall-clock time: {format_duration(end - start)}, from the start of the first epoch to "
                     f"the end of the last, pauses and restarts included.")
        lines.append(f"- Training time summed over configurations: "
                     f"{format_duration(sum(record['epoch_seconds'] for record in timed))}, "
                     f"without start-up, checkpoint saves and waiting.")
    missing = [member for member in {m.stem: m for m in found.members if m.target is not None}.values()
               if member.result is not None and member.stem not in found.histories]
    if missing:
        lines.append(f"- {len(missing)} configurations with results have no history file, so their epochs and "
                     f"time are not counted. Running their train.py command again writes it and trains nothing.")
    return lines


def failure_lines(settings: SearchSettings, found: Survey) -> list[str]:
    lines = []
    for bracket_runs in found.rounds:
        for run in bracket_runs:
            for member, result in zip(run.members, run.results):
                if result is None or result.status == "ok":
                    continue
                _, stderr_path = trial_log_paths(settings.folder / "logs", result.stem, result.epochs)
                message = f": {result.message}" if result.message else ""
                lines.append(f"- {settings.describe(member.config)} (bracket s={member.bracket}) to "
                             f"{result.epochs} epochs: {result.status}{message}. Log: `{stderr_path}`")
    return lines or ["None."]


def write_report(settings: SearchSettings) -> tuple[Path, str, list[Path]]:
    """Redraw the plots and write report.md into the search's folder, atomically.

    Returns the report's path, its text and the paths of the plots. Raises OSError when the report
    cannot be written; a plot that cannot be written only warns.
    """
    found = survey(settings)
    try:
        plot_paths = draw_search_plots(settings, found)
    except OSError as error:
        log.warning("could not write the plots in %s: %s", plots_folder(settings), error.strerror or error)
        plot_paths = []
    text = render_report(settings, found, plot_paths)
    path = settings.folder / REPORT_FILE
    checkpoint.write_atomic(text.encode(), path)
    return path, text, plot_paths
