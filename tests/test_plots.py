"""plots.py on made-up histories: file size and content, line styles, time gaps, axis limits, no matplotlib."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

import plots
from conftest import ROOT, environment_hiding

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install matplotlib)")

START = 1_700_000_000.0  # a Unix time, seconds
EPOCH_SECONDS = 30.0
IMAGES_PER_EPOCH = 45_000


def records(epochs: int, rate: float, start: float = START, pauses: dict[int, float] | None = None) -> list[dict]:
    """Make a history of `epochs` epochs that learns at `rate`, pausing pauses[e] seconds before epoch e."""
    history, clock = [], start
    for epoch in range(1, epochs + 1):
        clock += (pauses or {}).get(epoch, 0.0) + EPOCH_SECONDS
        history.append({"epoch": epoch, "val_loss": 2.3 * math.exp(-rate * epoch) + 0.3,
                     "val_acc": 0.9 - 0.8 * math.exp(-rate * epoch), "examples_seen": epoch * IMAGES_PER_EPOCH,
                     "timestamp": clock, "epoch_seconds": EPOCH_SECONDS})
    return history


def sample_curves() -> list[plots.Curve]:
    """One best and one other curve still in the running, then six discarded ones."""
    curves = [plots.Curve("lr=0.3", records(9, 0.5, pauses={2: 1800, 4: 1800}), alive=True, best=True),
              plots.Curve("lr=0.2", records(9, 0.3, pauses={2: 1800, 4: 1800}), alive=True)]
    curves += [plots.Curve(f"lr=0.0{k}", records(1 if k < 4 else 3, 0.1 * k, START + 30 * k), alive=False)
               for k in range(1, 7)]
    return curves


def lines_drawn(axes) -> list:
    """Return the axes' lines that carry data (two or more points, or markers)."""
    return [line for line in axes.get_lines() if len(line.get_xdata()) > 0]


# ---------------------------------------------------------------- files


def test_plot_files_sized_and_not_blank(tmp_path):
    from matplotlib import image

    paths = plots.draw_plots(sample_curves(), tmp_path / "plots", "cifar10_vgg11_R9_eta3_seed0_0123abcd")

    assert [path.name for path in paths] == list(plots.PLOT_NAMES.values())
    for path in paths:
        pixels = image.imread(path)
        height, width = pixels.shape[:2]
        colours = {tuple(pixel) for pixel in pixels.reshape(-1, pixels.shape[2])[::7].tolist()}
        assert (width, height) == (plots.FIGURE_INCHES[0] * plots.DPI, plots.FIGURE_INCHES[1] * plots.DPI)
        assert len(colours) > 200, f"{path.name} has only {len(colours)} colours"
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary file left


def test_nothing_drawn_without_epochs(tmp_path):
    paths = plots.draw_plots([plots.Curve("lr=0.1", [], alive=True)], tmp_path / "plots", "empty")

    assert paths == []
    assert not (tmp_path / "plots").exists()


# ---------------------------------------------------------------- styles


def test_discarded_curves_drawn_faint():
    figure = plots.draw_figure(sample_curves(), "examples", "search")
    loss_axes, accuracy_axes = figure.axes

    solid = [line for line in lines_drawn(accuracy_axes) if line.get_linestyle() == "-"]
    faint = [line for line in solid if line.get_color() == "0.55"]
    strong = [line for line in solid if line.get_color() != "0.55"]
    assert len(faint) == 6
    assert len(strong) == 2
    assert max(line.get_linewidth() for line in faint) < min(line.get_linewidth() for line in strong)
    assert max(line.get_alpha() for line in faint) < min(line.get_alpha() for line in strong)
    assert strong[0].get_color() != strong[1].get_color()


def test_best_curve_marked_with_star():
    curves = sample_curves()
    figure = plots.draw_figure(curves, "examples", "search")
    loss_axes, accuracy_axes = figure.axes

    stars = [line for line in lines_drawn(accuracy_axes) if line.get_marker() == "*"]
    best_record = max(curves[0].records, key=lambda record: record["val_acc"])
    assert len(stars) == 1
    assert list(stars[0].get_xdata()) == [best_record["examples_seen"]]
    assert list(stars[0].get_ydata()) == [best_record["val_acc"]]
    assert len([line for line in lines_drawn(loss_axes) if line.get_marker() == "*"]) == 1


def test_legend_names_best_and_counts_discarded():
    figure = plots.draw_figure(sample_curves(), "time", "search")

    texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert texts[0] == "best: lr=0.3"
    assert texts[1] == "lr=0.2"
    assert "discarded (6)" in texts
    assert "waiting, not training" in texts


def test_axes_labelled_with_units():
    by_examples = plots.draw_figure(sample_curves(), "examples", "search")
    by_time = plots.draw_figure(sample_curves(), "time", "search")

    assert by_examples.axes[0].get_xlabel() == "training examples seen"
    # 9 epochs of 30 s and two pauses of 30 min: about an hour.
    assert by_time.axes[1].get_xlabel() == "wall-clock time since the search started (min)"
    assert by_time.axes[0].get_ylabel() == "cross-entropy loss"
    assert by_time.axes[1].get_ylabel() == "accuracy"


# ---------------------------------------------------------------- wall-clock time


def test_long_pause_drawn_as_wait():
    history = records(4, 0.5, pauses={3: 600})

    solid, waiting = plots.time_segments(history, "val_acc", START, 1.0)

    assert len(waiting) == 3  # one connector: two points and a break
    assert waiting[0] == (history[1]["timestamp"] - START, history[1]["val_acc"])
    assert waiting[1] == (history[2]["timestamp"] - START, history[2]["val_acc"])
    assert len(solid) == 5  # four points, with a break between epochs 2 and 3
    assert math.isnan(solid[2][0])


def test_short_pause_drawn_solid():
    solid, waiting = plots.time_segments(records(3, 0.5, pauses={2: 5, 3: 5}), "val_loss", START, 60.0)

    assert waiting == []
    assert len(solid) == 3


def test_records_without_timestamp_skipped():
    history = records(3, 0.5)
    del history[0]["timestamp"]

    solid, waiting = plots.time_segments(history, "val_loss", START, 1.0)

    assert [x for x, _ in solid] == [history[1]["timestamp"] - START, history[2]["timestamp"] - START]
    assert waiting == []


@pytest.mark.parametrize("span, unit", [(90, "s"), (3000, "min"), (30_000, "h")])
def test_time_unit_follows_span(span, unit):
    first = plots.Curve("lr=0.1", [{"epoch": 1, "timestamp": START + 10.0, "epoch_seconds": 10.0}], alive=False)
    last = plots.Curve("lr=0.2", [{"epoch": 1, "timestamp": START + span, "epoch_seconds": 10.0}], alive=True)

    start, scale, chosen = plots.time_axis([last, first])

    assert chosen == unit
    assert start == START
    assert scale == {"s": 1.0, "min": 60.0, "h": 3600.0}[unit]


# ---------------------------------------------------------------- diverged runs


def test_diverged_loss_does_not_stretch_axis():
    curves = sample_curves()
    diverged = records(3, 0.5)
    diverged[1]["val_loss"] = 1e10
    diverged[2]["val_loss"] = None  # a non-finite loss, as the history file stores it
    diverged[2]["val_acc"] = 0.1
    curves.append(plots.Curve("lr=0.9", diverged, alive=False))

    figure = plots.draw_figure(curves, "examples", "search")

    low, high = figure.axes[0].get_ylim()
    assert high < 10
    assert low > 0


# ---------------------------------------------------------------- without matplotlib


def test_missing_matplotlib_warns_once(tmp_path):
    code = ("import logging, pathlib, sys, plots; logging.basicConfig(); "
            "curve = plots.Curve('lr=0.1', [{'epoch': 1, 'val_loss': 1.0, 'val_acc': 0.5, 'examples_seen': 10}], "
            "alive=True); folder = pathlib.Path(sys.argv[1]); "
            "print(plots.draw_plots([curve], folder, 'a'), plots.draw_plots([curve], folder, 'b'))")
    completed = subprocess.run([sys.executable, "-c", code, str(tmp_path / "plots")], capture_output=True, text=True,
                               timeout=60, cwd=ROOT, env=environment_hiding(tmp_path, "matplotlib"))

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[] []"
    assert completed.stderr.count("pip install matplotlib") == 1
    assert not (tmp_path / "plots").exists()
