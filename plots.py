"""Plots of a search's validation curves, drawn with matplotlib into PNG files.

Two figures, each with a validation-loss panel and a validation-accuracy panel: one against the
training examples seen, one against wall-clock time since the search started. Each configuration
is one line with a marker per epoch. Configurations still in the running are drawn strong and in
colour, discarded ones thin and grey, and the best one thickest, with a star at its best accuracy.

matplotlib is imported only when drawing. Without it, `draw_plots` draws nothing and logs one
warning per process with the command that installs it, so a search still runs.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import statistics
from pathlib import Path

import checkpoint

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install matplotlib"
FIGURE_INCHES = (13.0, 5.0)
DPI = 100
PLOT_NAMES = {"examples": "validation_by_examples.png", "time": "validation_by_time.png"}
MAX_LEGEND_CURVES = 10  # configurations named in the legend; the rest are counted
# A diverging run's loss can reach 1e10 and would flatten every other curve, so the loss axis
# stops at this multiple of the median loss and the points above it are cut off.
LOSS_AXIS_MEDIAN_MULTIPLE = 3.0

_warned_missing = False


@dataclasses.dataclass(frozen=True)
class Curve:
    label: str  # shown in the legend
    records: list[dict]  # the configuration's history records, one per completed epoch
    alive: bool  # still in the running: drawn strong, else thin and grey
    best: bool = False


def matplotlib_missing() -> bool:
    """Tell whether matplotlib cannot be imported, warning once per process when it cannot."""
    global _warned_missing
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not _warned_missing:
            log.warning("matplotlib is not installed, so the search draws no plots; %s to get them", INSTALL_HINT)
            _warned_missing = True
        return True
    return False


def draw_plots(curves: list[Curve], folder: Path, title: str) -> list[Path]:
    """Draw both figures of `curves` into `folder` and return the paths written.

    Colours go to the curves still in the running in the order given, so pass them best first.
    Returns [] without matplotlib or when no curve has a completed epoch. Each file is written
    atomically; an OSError from the write is raised.
    """
    if matplotlib_missing():
        return []
    curves = [curve for curve in curves if curve.records]
    if not curves:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for axis, name in PLOT_NAMES.items():
        figure = draw_figure(curves, axis, title)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        path = folder / name
        checkpoint.write_atomic(buffer.getvalue(), path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- one figure


def draw_figure(curves: list[Curve], axis: str, title: str):
    """Return a figure with the loss and accuracy panels of `curves` against `axis` ("examples" or "time")."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, PercentFormatter

    # A Figure without pyplot needs no display and keeps no global state between rounds.
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    start, scale = 0.0, 1.0
    if axis == "examples":
        x_label = "training examples seen"
        figure.suptitle(f"{title}: validation curves by training examples seen", x=0.01, ha="left")
    else:
        start, scale, unit = time_axis(curves)
        x_label = f"wall-clock time since the search started ({unit})"
        figure.suptitle(f"{title}: validation curves by wall-clock time", x=0.01, ha="left")

    # Discarded curves first, so that the curves in the running and the best one are drawn on top.
    colours = figure_colours()
    styles = []
    alive_count = 0
    for curve in curves:
        if curve.alive or curve.best:
            style = {"color": colours[alive_count % len(colours)], "linewidth": 2.6 if curve.best else 1.6,
                     "markersize": 4, "alpha": 0.95, "zorder": 3 if curve.best else 2}
            alive_count += 1
        else:
            style = {"color": "0.55", "linewidth": 0.8, "markersize": 2, "alpha": 0.5, "zorder": 1}
        styles.append(style)
    for key, axes in (("val_loss", loss_axes), ("val_acc", accuracy_axes)):
        for curve, style in sorted(zip(curves, styles), key=lambda pair: pair[1]["zorder"]):
            if axis == "examples":
                points = [(record["examples_seen"], value_of(record, key)) for record in curve.records]
                draw_line(axes, points, [], style)
            else:
                solid, waiting = time_segments(curve.records, key, start, scale)
                draw_line(axes, solid, waiting, style)
            if curve.best:
                mark_best(axes, curve, key, axis, style, start, scale)

    # Axes, with units
    loss_axes.set_title("Validation loss")
    loss_axes.set_ylabel("cross-entropy loss")
    limit_loss_axis(loss_axes, curves)
    accuracy_axes.set_title("Validation accuracy")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel(x_label)
        axes.grid(True, color="0.9")
        axes.set_xlim(left=0)
        if axis == "examples":
            axes.xaxis.set_major_formatter(EngFormatter(sep=""))

    add_legend(figure, curves, styles, axis)
    return figure


def figure_colours() -> list:
    from matplotlib import colormaps

    return list(colormaps["tab10"].colors)


def value_of(record: dict, key: str) -> float:
    """Return the record's value as a float, NaN where it is missing or not finite (a diverged run)."""
    value = record.get(key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.nan
    return float(value)


def draw_line(axes, solid: list[tuple[float, float]], waiting: list[tuple[float, float]], style: dict) -> None:
    """Draw `solid` as a line with markers, and `waiting` (pairs of points) as dotted connectors."""
    if solid:
        xs, ys = zip(*solid)
        axes.plot(xs, ys, marker="o", linestyle="-", color=style["color"], linewidth=style["linewidth"],
                  markersize=style["markersize"], alpha=style["alpha"], zorder=style["zorder"])
    if waiting:
        xs, ys = zip(*waiting)
        axes.plot(xs, ys, linestyle=":", color=style["color"], linewidth=max(0.8, style["linewidth"] / 2),
                  alpha=style["alpha"], zorder=style["zorder"])


def mark_best(axes, curve: Curve, key: str, axis: str, style: dict, start: float, scale: float) -> None:
    """Put a star on `curve` at its epoch of highest validation accuracy."""
    scored = [record for record in curve.records if not math.isnan(value_of(record, "val_acc"))]
    if not scored:
        return
    best = max(scored, key=lambda record: value_of(record, "val_acc"))
    if axis == "examples":
        x = best["examples_seen"]
    elif isinstance(best.get("timestamp"), (int, float)):
        x = (best["timestamp"] - start) / scale
    else:
        return
    axes.plot([x], [value_of(best, key)], marker="*", markersize=18, color=style["color"],
              markeredgecolor="black", linestyle="none", zorder=4)


# ---------------------------------------------------------------- wall-clock time


def time_axis(curves: list[Curve]) -> tuple[float, float, str]:
    """Return the search's start (Unix seconds), the seconds per axis unit and the unit's name.

    The start is the beginning of the earliest epoch, so the first point sits one epoch after 0.
    """
    starts, ends = [], []
    for curve in curves:
        for record in curve.records:
            if not isinstance(record.get("timestamp"), (int, float)):
                continue
            duration = value_of(record, "epoch_seconds")
            starts.append(record["timestamp"] - (0.0 if math.isnan(duration) else duration))
            ends.append(record["timestamp"])
    if not starts:
        return 0.0, 1.0, "s"
    span = max(ends) - min(starts)
    if span < 120:
        return min(starts), 1.0, "s"
    if span < 120 * 60:
        return min(starts), 60.0, "min"
    return min(starts), 3600.0, "h"


def time_segments(records: list[dict], key: str, start: float, scale: float
                  ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Split a configuration's points by wall-clock time into trained stretches and waits.

    Returns the points of solid lines, with NaN points where a line breaks, and the pairs of points
    of dotted connectors. Two consecutive epochs are joined by a solid line when the idle time
    between them is shorter than the later epoch itself. A longer wait (waiting for promotion,
    a restarted search, another process holding the lock) gets a dotted connector, so gaps stay
    visible. Records without a timestamp, written before timestamps were recorded, are skipped.
    """
    timed = [record for record in records if isinstance(record.get("timestamp"), (int, float))]
    solid: list[tuple[float, float]] = []
    waiting: list[tuple[float, float]] = []
    previous = None
    for record in timed:
        point = ((record["timestamp"] - start) / scale, value_of(record, key))
        if previous is not None:
            duration = value_of(record, "epoch_seconds")
            idle = record["timestamp"] - (0.0 if math.isnan(duration) else duration) - previous[0]
            if math.isnan(duration) or idle > duration:
                solid.append((math.nan, math.nan))
                waiting += [previous[1], point, (math.nan, math.nan)]
        solid.append(point)
        previous = (record["timestamp"], point)
    return solid, waiting


# ---------------------------------------------------------------- axes and legend


def limit_loss_axis(axes, curves: list[Curve]) -> None:
    losses = [value_of(record, "val_loss") for curve in curves for record in curve.records]
    losses = [loss for loss in losses if not math.isnan(loss)]
    if not losses:
        return
    low = min(losses)
    high = min(max(losses), LOSS_AXIS_MEDIAN_MULTIPLE * statistics.median(losses))
    margin = 0.05 * (high - low) if high > low else 0.05 * abs(high) + 0.01
    axes.set_ylim(low - margin, high + margin)


def add_legend(figure, curves: list[Curve], styles: list[dict], axis: str) -> None:
    """Name the best curve and the first curves still in the running; count the others."""
    from matplotlib.lines import Line2D

    handles = []
    named = [(curve, style) for curve, style in zip(curves, styles) if curve.alive or curve.best]
    for curve, style in named[:MAX_LEGEND_CURVES]:
        label = f"best: {curve.label}" if curve.best else curve.label
        handles.append(Line2D([], [], color=style["color"], linewidth=style["linewidth"], marker="*" if curve.best
                              else "o", markersize=10 if curve.best else style["markersize"],
                              markeredgecolor="black" if curve.best else style["color"], label=label))
    blank = {"color": "none", "linestyle": "none"}
    if len(named) > MAX_LEGEND_CURVES:
        handles.append(Line2D([], [], **blank, label=f"{len(named) - MAX_LEGEND_CURVES} more in the running"))
    discarded = len(curves) - len(named)
    if discarded:
        handles.append(Line2D([], [], color="0.55", linewidth=0.8, marker="o", markersize=2, alpha=0.5,
                              label=f"discarded ({discarded})"))
    if axis == "time" and any(time_segments(curve.records, "val_acc", 0.0, 1.0)[1] for curve in curves):
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="waiting, not training"))
    figure.legend(handles=handles, loc="outside right upper", fontsize="small", title="coloured: still in the running",
                  title_fontsize="small", alignment="left")
