"""The report of a comparison of two models, and its plot, from the runs' stored test results.

Nothing here trains, reads the clock or depends on the order in which runs finished, and the
bootstrap is seeded with the comparison's seed, so the same finished runs always give the same
report, byte for byte. matplotlib is imported only to draw the plot. Without it the report states
that the plot is missing, and one warning per process names the command that installs it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import numpy as np

import checkpoint
import stats

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PLOT_FILE = "test_accuracy.png"
INSTALL_HINT = "pip install matplotlib"
# P(A > B) must exceed this, and its interval lie above 0.5, for A to be declared better.
THRESHOLD = 0.75
# Hyperparameters shown for each winner; the others are the same for every run of a model.
SHOWN_FIELDS = ("lr", "lr_decay", "lr_step", "batch_size", "momentum", "weight_decay")

_warned_missing = False


@dataclasses.dataclass(frozen=True)
class Settings:
    labels: tuple[str, str]  # model A's, then model B's
    dataset: str
    max_epochs: int
    eta: int
    seed: int
    val_fraction: float
    repeats: int
    search_repeats: int
    resample_split: bool


@dataclasses.dataclass(frozen=True)
class Winner:
    """The best configuration of one search, as its leaderboard ranks it by validation accuracy."""

    label: str
    search: int  # index of the search among this model's searches
    seed: int  # the search's --seed
    config: checkpoint.Config
    epochs: int
    val_acc: float
    folder: Path
    command: str


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One retraining of a winner from scratch, and its stored test result."""

    label: str
    search: int
    index: int
    config: checkpoint.Config
    epochs: int
    stored: dict  # the JSON that train.py --test wrote
    command: str

    @property
    def test_acc(self) -> float:
        # NOTE: a run that diverged counts as test accuracy 0, the worst score, since its training
        # failed; the report lists such runs.
        return 0.0 if self.stored["test_acc"] is None else self.stored["test_acc"]

    @property
    def diverged(self) -> bool:
        return self.stored["status"] == "diverged"


# ---------------------------------------------------------------- the estimates


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Both models' test accuracies under one way of sampling runs, and P(A > B) from them."""

    title: str
    samples: tuple[list[float], list[float]]
    summaries: tuple[stats.Summary, stats.Summary]
    comparison: stats.Comparison


def estimate(title: str, runs: list[RunResult], settings: Settings) -> Estimate:
    samples = tuple([run.test_acc for run in runs if run.label == label] for label in settings.labels)
    summaries = tuple(stats.summarize(sample, label, settings.seed) for sample, label in zip(samples, settings.labels))
    return Estimate(title, samples, summaries, stats.compare(*samples, seed=settings.seed, threshold=THRESHOLD))


def verdict(labels: tuple[str, str], comparison: stats.Comparison) -> str:
    """Say in words what the decision rule concludes from `comparison`."""
    a, b = labels
    probability, low, high = comparison.probability, comparison.interval.low, comparison.interval.high
    if comparison.winner == "A":
        return f"{a} beats {b} with probability {probability:.2f} (95% CI {low:.2f} to {high:.2f})."
    if comparison.winner == "B":
        return f"{b} beats {a} with probability {1 - probability:.2f} (95% CI {1 - high:.2f} to {1 - low:.2f})."
    if comparison.significant:
        better, worse, shown = (a, b, probability) if low > 0.5 else (b, a, 1 - probability)
        return (f"No winner: {better} beats {worse} with probability {shown:.2f}, which is significant but not above "
                f"the threshold {THRESHOLD}, so the difference is too small to call meaningful.")
    return (f"No winner: P({a} > {b}) = {probability:.2f} (95% CI {low:.2f} to {high:.2f}). The interval contains "
            f"0.5, so these runs cannot tell the two models apart.")


# ---------------------------------------------------------------- the report


def write_report(folder: Path, settings: Settings, winners: list[Winner], runs: list[RunResult]) -> tuple[Path, str]:
    """Draw the plot, render the report, write both into `folder` atomically; return the report's path and text."""
    cheap = estimate(f"{settings.repeats} retrainings of one search's winner",
                     [run for run in runs if run.search == 0], settings)
    ideal = None
    if settings.search_repeats >= 2:
        ideal = estimate(f"{settings.search_repeats} searches, one retraining of each winner",
                         [run for run in runs if run.index == 0], settings)
    estimates = [cheap] + ([ideal] if ideal is not None else [])
    plot_path = draw_plot(folder / PLOT_FILE, settings.labels, estimates)
    text = render_report(settings, winners, runs, cheap, ideal, plot_path)
    path = folder / REPORT_FILE
    checkpoint.write_atomic(text.encode(), path)
    return path, text


def render_report(settings: Settings, winners: list[Winner], runs: list[RunResult], cheap: Estimate,
                  ideal: Estimate | None, plot_path: Path | None) -> str:
    a, b = settings.labels
    split_text = "its own train/validation split and its own seed" if settings.resample_split else (
        "its own seed (the train/validation split stays the standard one)")
    lines = [f"# Comparison of {a} and {b} on {settings.dataset}", ""]

    # What was run
    lines += [
        f"Each model's hyperparameters were tuned by a Hyperband search with the same settings: R = "
        f"{settings.max_epochs} epochs, eta = {settings.eta}, seed {settings.seed}, validation fraction "
        f"{settings.val_fraction}. The winner of each search, the configuration with the best validation accuracy, "
        f"was then trained from scratch {settings.repeats} times, each time with {split_text}. The seed sets the "
        f"initial weights, the data order and the augmentation. Each final model was evaluated once on the test "
        f"set, which took part in no choice.",
        "",
    ]

    # Verdict
    lines += ["## Verdict", "", verdict(settings.labels, cheap.comparison), ""]
    lines += [
        f"P({a} > {b}) is the probability that a run of {a} reaches a higher test accuracy than a run of {b}, "
        f"estimated over all {len(cheap.samples[0])} x {len(cheap.samples[1])} pairs of runs, a tie counting one "
        f"half. Its 95% confidence interval is a percentile bootstrap over the runs of each model.",
        "",
        f"Decision rule, this tool's choice: a model is declared better when the interval lies entirely on its side "
        f"of 0.5, so that the difference is unlikely to come from the luck of the runs (significant), and its "
        f"probability of beating the other is above {THRESHOLD}, so that it wins most pairings and not just "
        f"slightly more than half (meaningful). Otherwise the report declares no winner.",
        "",
        f"With {settings.repeats} runs per model these intervals are wide: few runs can tell apart only large "
        f"differences. More runs (--repeats) narrow them.",
        "",
    ]

    # Per model
    lines += ["## Test accuracy", "", f"Estimate from {cheap.title}.", ""]
    lines += summary_table(settings.labels, cheap)
    diverged = [run for run in runs if run.diverged]
    if diverged:
        lines += ["", f"{len(diverged)} run(s) diverged and count as test accuracy 0: "
                  + ", ".join(f"{run.label} (seed {run.config.seed})" for run in diverged) + "."]
    lines.append("")

    # The costly estimate, when searches were repeated
    lines += ["## Estimate with repeated searches", ""]
    if ideal is None:
        lines += ["Not computed: each model had one search. With --search-repeats M (M >= 2) each model is searched M "
                  "times with seeds --seed, --seed + 1, ..., and each search's winner is retrained once. That "
                  "estimate also counts the luck of the search itself, at M times the cost of the searches.", ""]
    else:
        lines += [f"Estimate from {ideal.title}. It also counts the luck of the search itself, at "
                  f"{settings.search_repeats} times the cost of the searches.", ""]
        lines += summary_table(settings.labels, ideal)
        lines += ["", "| estimate | P(" + a + " > " + b + ") | 95% CI |", "|---|---:|---|"]
        for entry in (cheap, ideal):
            comparison = entry.comparison
            lines.append(f"| {entry.title} | {comparison.probability:.3f} | {comparison.interval.low:.3f} to "
                         f"{comparison.interval.high:.3f} |")
        difference = ideal.comparison.probability - cheap.comparison.probability
        lines += ["", f"Verdict from repeated searches: {verdict(settings.labels, ideal.comparison)}",
                  f"The two estimates of P({a} > {b}) differ by {difference:+.3f}.", ""]

    # Winners
    headers = ["model", "search seed"] + [field.replace("_", " ") for field in SHOWN_FIELDS] + [
        "epochs", "val acc", "search folder"]
    lines += ["## Winners of the searches", "", "| " + " | ".join(headers) + " |",
              "|" + "---|" * len(headers)]
    for winner in winners:
        values = [checkpoint.format_number(getattr(winner.config, field)) for field in SHOWN_FIELDS]
        lines.append(f"| {winner.label} | {winner.seed} | " + " | ".join(values)
                     + f" | {winner.epochs} | {winner.val_acc:.4f} | {winner.folder} |")
    lines.append("")

    # Runs
    lines += ["## Runs", "", "| model | search | run | seed | split | status | test acc | test loss |",
              "|---|---:|---:|---:|---:|---|---:|---:|"]
    for run in runs:
        loss = "" if run.stored["test_loss"] is None else f"{run.stored['test_loss']:.4f}"
        accuracy = "" if run.stored["test_acc"] is None else f"{run.stored['test_acc']:.4f}"
        lines.append(f"| {run.label} | {run.search + 1} | {run.index + 1} | {run.config.seed} | "
                     f"{run.config.split_seed} | {run.stored['status']} | {accuracy} | {loss} |")
    lines.append("")

    # Plot
    lines += ["## Plot", ""]
    if plot_path is None:
        lines += [f"No plot: matplotlib is not installed ({INSTALL_HINT}).", ""]
    else:
        lines += [f"![Test accuracy of every run]({plot_path.name})", ""]

    # Commands
    lines += ["## Commands", "", "Searches (hyperband.py), then the retrainings (train.py; each also got the --device "
              "and --threads of the slot it ran in):", "", "```sh"]
    lines += [winner.command for winner in winners]
    lines += [run.command for run in runs]
    lines += ["```", ""]
    return "\n".join(lines)


def summary_table(labels: tuple[str, str], entry: Estimate) -> list[str]:
    lines = ["| model | runs | mean | std | 95% CI of the mean | min | max |", "|---|---:|---:|---:|---|---:|---:|"]
    for label, summary in zip(labels, entry.summaries):
        lines.append(f"| {label} | {summary.count} | {percent(summary.mean)} | {percent(summary.std)} | "
                     f"{percent(summary.mean_interval.low)} to {percent(summary.mean_interval.high)} | "
                     f"{percent(summary.minimum)} | {percent(summary.maximum)} |")
    lines += ["", f"P({labels[0]} > {labels[1]}) = {entry.comparison.probability:.3f} (95% CI "
              f"{entry.comparison.interval.low:.3f} to {entry.comparison.interval.high:.3f})."]
    return lines


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


# ---------------------------------------------------------------- the plot


def matplotlib_missing() -> bool:
    """Tell whether matplotlib cannot be imported, warning once per process when it cannot."""
    global _warned_missing
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not _warned_missing:
            log.warning("matplotlib is not installed, so the comparison draws no plot; %s to get it", INSTALL_HINT)
            _warned_missing = True
        return True
    return False


def draw_plot(path: Path, labels: tuple[str, str], estimates: list[Estimate]) -> Path | None:
    """Draw every run's test accuracy, one row per model and estimate, with the mean and its interval.

    Returns the path written, or None without matplotlib.
    """
    if matplotlib_missing():
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    rows = [(entry, side) for entry in estimates for side in (0, 1)]
    figure = Figure(figsize=(9.0, 1.2 + 0.8 * len(rows)), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    jitter = np.random.default_rng(0)  # fixed, so that the same runs give the same picture
    colors = ("tab:blue", "tab:orange")
    for position, (entry, side) in enumerate(reversed(rows)):
        sample = np.asarray(entry.samples[side])
        summary = entry.summaries[side]
        offsets = jitter.uniform(-0.15, 0.15, size=len(sample))
        axes.scatter(sample, position + offsets, color=colors[side], alpha=0.7, zorder=3)
        axes.errorbar([summary.mean], [position], xerr=[[summary.mean - summary.mean_interval.low],
                                                        [summary.mean_interval.high - summary.mean]],
                      fmt="D", color="black", capsize=4, zorder=4)
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([f"{labels[side]}\n{entry.title}" if len(estimates) > 1 else labels[side]
                          for entry, side in reversed(rows)])
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel("test accuracy (dots: runs; diamond: mean with its 95% bootstrap interval)")
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(f"P({labels[0]} > {labels[1]}) = {estimates[0].comparison.probability:.2f} "
                   f"(95% CI {estimates[0].comparison.interval.low:.2f} to "
                   f"{estimates[0].comparison.interval.high:.2f})")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    checkpoint.write_atomic(buffer.getvalue(), path)
    return path
