"""The search's report and plots, from a real tiny search: at its end, on demand, and for a stopped search."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import checkpoint
import hyperband
import plan
import plots
import report
import rounds
import space
from conftest import ROOT, environment_hiding, environment_without_gpus
from search import RoundOutcome, Trial

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install matplotlib)")

SEARCH_FLAGS = ["--model", "small", "--width", "0.5", "--max-epochs", "3", "--eta", "3", "--workers", "2"]


def run_hyperband(scratch: Path, data_dir: Path, space_file: Path, *extra: str, env: dict | None = None):
    command = [sys.executable, str(ROOT / "hyperband.py"), *SEARCH_FLAGS, "--data-dir", str(data_dir),
               "--scratch", str(scratch), "--space", str(space_file), "--quiet", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env=env or environment_without_gpus())


def search_settings(scratch: Path, data_dir: Path, space_file: Path) -> report.SearchSettings:
    """Rebuild the settings that hyperband.py derives from SEARCH_FLAGS, as its run function does."""
    args = hyperband.build_parser().parse_args(SEARCH_FLAGS + ["--space", str(space_file)])
    brackets = plan.plan_brackets(args.max_epochs, args.eta)
    dimensions = space.load_space(space_file)
    rng = random.Random(args.seed)
    base = checkpoint.Config(model="small", width=0.5, seed=args.seed)
    configs = [space.sample_configs(dimensions, bracket.rounds[0].configs, rng, base) for bracket in brackets]
    folder = hyperband.search_folder(scratch, args, space_file.read_text())
    return report.SearchSettings(folder, scratch, data_dir, brackets, configs,
                                 describe=lambda config: hyperband.describe(config, dimensions))


def file_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def assert_png_drawn(path: Path) -> None:
    from matplotlib import image

    pixels = image.imread(path)
    height, width = pixels.shape[:2]
    colours = {tuple(pixel) for pixel in pixels.reshape(-1, pixels.shape[2])[::7].tolist()}
    assert (width, height) == (plots.FIGURE_INCHES[0] * plots.DPI, plots.FIGURE_INCHES[1] * plots.DPI)
    assert len(colours) > 100, f"{path.name} has only {len(colours)} colours"


def section(text: str, title: str) -> str:
    """Return the body of the report section `## title`."""
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_block(text: str) -> str:
    return text.split("```", 2)[1].split("\n", 1)[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cifar_dir, space_file):
    """Run one search; return its scratch folder, its output and its settings."""
    scratch = tmp_path_factory.mktemp("report") / "scratch"
    completed = run_hyperband(scratch, cifar_dir, space_file)
    return scratch, completed, search_settings(scratch, cifar_dir, space_file)


@pytest.fixture
def copied(tmp_path, finished, cifar_dir, space_file):
    """Return a copy of the finished search's scratch folder, and its settings."""
    scratch = tmp_path / "scratch"
    shutil.copytree(finished[0], scratch, symlinks=True)
    return scratch, search_settings(scratch, cifar_dir, space_file)


def leaderboard_csv(folder: Path) -> list[dict]:
    with open(folder / "leaderboard.csv", newline="") as file:
        return list(csv.DictReader(file))


# ---------------------------------------------------------------- at the end of the search


def test_search_writes_report_and_plots(finished):
    scratch, completed, settings = finished

    printed = {}
    for line in completed.stdout.splitlines():
        label, _, path = line.partition(":")
        if label in ("Report", "Plot"):
            printed.setdefault(label, []).append(path.strip())
    report_path = settings.folder / report.REPORT_FILE
    plot_paths = printed.get("Plot", [])
    assert completed.returncode == 0, completed.stderr
    assert printed["Report"] == [str(report_path)]
    assert report_path.exists()
    assert plot_paths == [str(settings.folder / "plots" / name) for name in plots.PLOT_NAMES.values()]
    for path in plot_paths:
        assert_png_drawn(Path(path))
    assert "WARNING" not in completed.stderr


def test_report_tables_as_planned_and_run(finished):
    _, _, settings = finished
    text = (settings.folder / report.REPORT_FILE).read_text()

    brackets = section(text, "Brackets")
    planned, as_run = brackets.split("```text\n")[1], brackets.split("```text\n")[2]
    assert text.startswith(f"# Hyperband search {settings.folder.name}\n")
    assert "Status: finished." in text
    assert re.search(r"s=1\s+3 x 1\s+1 x 3\s+5\s+6", planned), planned
    assert re.search(r"s=1\s+3 x 1\s+1 x 3\s+5\n", as_run), as_run
    assert re.search(r"s=0\s+2 x 3\s+6\n", as_run), as_run
    assert re.search(r"total\s+11\n", as_run), as_run
    assert section(text, "Failures").strip() == "None."
    assert "Epochs completed: 11 of the 11 planned (12 if" in section(text, "Time and epochs")
    assert "Wall-clock time: " in section(text, "Time and epochs")


def test_report_leaderboard_matches_csv(finished):
    scratch, _, settings = finished
    text = (settings.folder / report.REPORT_FILE).read_text()
    expected = leaderboard_csv(settings.folder)

    rows = code_block(section(text, "Leaderboard")).strip().splitlines()[1:]

    assert len(rows) == len(expected) == 5
    for row, csv_row in zip(rows, expected):
        rank, epochs, val_acc, status = row.split()[:4]
        name = row.split()[-1]
        assert (rank, epochs, status) == (csv_row["rank"], csv_row["epochs"], csv_row["status"])
        assert float(val_acc) == float(csv_row["val_acc"])
        assert name == Path(csv_row["checkpoint"]).name


def test_best_command_reproduces_result(finished, cifar_dir):
    scratch, _, settings = finished
    best = leaderboard_csv(settings.folder)[0]
    text = (settings.folder / report.REPORT_FILE).read_text()

    command = shlex.split(code_block(section(text, "Best configuration")))
    assert command[:2] == ["python", "train.py"]
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), *command[2:], "--quiet"],
                               capture_output=True, text=True, timeout=120, cwd=ROOT, env=environment_without_gpus())

    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert completed.returncode == 0, completed.stderr
    assert command[command.index("--lr") + 1] == best["lr"]
    assert command[command.index("--epochs") + 1] == best["epochs"]
    assert result["epochs_trained"] == 0
    assert result["val_acc"] == pytest.approx(float(best["val_acc"]), abs=5e-5)
    assert result["checkpoint"] == best["checkpoint"]


def test_rounds_file_records_promotions(finished):
    _, _, settings = finished

    recorded = rounds.read_rounds(settings.folder)

    assert sorted(recorded) == [(0, 0), (1, 0), (1, 1)]
    first, second = recorded[(1, 0)], recorded[(1, 1)]
    best_first = max(first.results, key=lambda result: result.val_acc)
    assert [result.epochs for result in first.results] == [1, 1, 1]
    assert len(first.kept) == 1
    assert first.kept[0] == [result.stem for result in second.results][0]
    assert first.kept[0] in [result.stem for result in first.results if result.val_acc == best_first.val_acc]
    assert second.kept == ()
    assert len(recorded[(0, 0)].results) == 2


# ---------------------------------------------------------------- on demand


def test_report_flag_trains_nothing(finished, cifar_dir, space_file):
    scratch, _, settings = finished
    checkpoints_before = file_snapshot(scratch / "checkpoints")
    logs_before = file_snapshot(settings.folder / "logs")
    journal_before = (settings.folder / "results.jsonl").read_bytes()
    report_before = (settings.folder / report.REPORT_FILE).read_text()

    completed = run_hyperband(scratch, cifar_dir, space_file, "--report")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"# Hyperband search {settings.folder.name}\n")
    assert completed.stdout.strip().endswith(f"Report written to {settings.folder / report.REPORT_FILE}")
    assert file_snapshot(scratch / "checkpoints") == checkpoints_before
    assert file_snapshot(settings.folder / "logs") == logs_before
    assert (settings.folder / "results.jsonl").read_bytes() == journal_before
    # The report is derived from the search's files alone, and --report changed none of them.
    assert (settings.folder / report.REPORT_FILE).read_text() == report_before
    assert "Traceback" not in completed.stderr


def test_report_of_unknown_search_exits_2(finished, cifar_dir, space_file):
    scratch, _, settings = finished

    completed = run_hyperband(scratch, cifar_dir, space_file, "--report", "--seed", "7")

    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith("hyperband.py: error: --report:")
    assert settings.folder.name in completed.stderr  # listed among the searches there
    assert "Traceback" not in completed.stderr
    assert len(list((scratch / "searches").iterdir())) == 1


def test_report_without_matplotlib_warns_once(copied, cifar_dir, space_file, tmp_path):
    scratch, settings = copied
    shutil.rmtree(settings.folder / "plots")

    completed = run_hyperband(scratch, cifar_dir, space_file, "--report",
                              env={**environment_without_gpus(), **environment_hiding(tmp_path, "matplotlib")})

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.count("pip install matplotlib") == 1
    assert "None: matplotlib is not installed (pip install matplotlib)." in section(completed.stdout, "Plots")
    assert not (settings.folder / "plots").exists()


# ---------------------------------------------------------------- a stopped search


def stop_after_first_round(settings: report.SearchSettings) -> None:
    """Make the search's files look as if the driver was killed during bracket s=1's second round,
    while bracket s=0's first round had trained nothing yet."""
    recorded = rounds.read_rounds(settings.folder)
    (settings.folder / rounds.ROUNDS_FILE).unlink()
    rounds.record_round(settings.folder, recorded[(1, 0)])
    untrained = {checkpoint.config_stem(config) for config in settings.configs[1]}
    for stem in untrained:
        for path in settings.scratch.glob(f"checkpoints/*/*/{stem}_*"):
            path.unlink()
        for path in settings.scratch.glob(f"checkpoints/*/*/{stem}.history.json"):
            path.unlink()
    journal = settings.folder / "results.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(line for line in lines if json.loads(line)["stem"] not in untrained))


def test_stopped_search_survey(copied):
    scratch, settings = copied
    stop_after_first_round(settings)

    found = report.survey(settings)

    promoted = rounds.read_rounds(settings.folder)[(1, 0)].kept[0]
    first_bracket, second_bracket = found.members[:3], found.members[3:]
    assert found.finished is False
    assert [member.alive for member in first_bracket] == [member.stem == promoted for member in first_bracket]
    # Brackets run at the same time, so the second one's first round is in progress.
    assert all(member.target == 3 for member in second_bracket)
    assert [run.finished for run in found.rounds[0]] == [True, False]
    assert found.rounds[1][0].members == second_bracket
    assert found.rounds[1][0].results == [None, None]
    assert found.rounds[1][0].finished is False
    assert len(found.leaderboard) == 3
    assert checkpoint.config_stem(found.leaderboard[0].config) == promoted
    assert sorted(len(h.records) for h in found.histories.values()) == [1, 1, 3]


def test_stopped_search_report(copied, cifar_dir, space_file):
    scratch, settings = copied
    stop_after_first_round(settings)

    completed = run_hyperband(scratch, cifar_dir, space_file, "--report")

    as_run = section(completed.stdout, "Brackets").split("```text\n")[2]
    assert completed.returncode == 0, completed.stderr
    assert "Status: not finished" in completed.stdout
    assert re.search(r"s=1\s+3 x 1\s+1 x 3 \(1 done\)\s+5\n", as_run), as_run
    assert re.search(r"s=0\s+2 x 3 \(0 done\)\s+0\n", as_run), as_run
    assert "Epochs completed: 5 of the 11 planned" in completed.stdout
    for path in settings.folder.glob("plots/*.png"):
        assert_png_drawn(path)


def test_recorder_redraws_only_after_training(copied):
    scratch, settings = copied
    shutil.rmtree(settings.folder / "plots")
    recorded = rounds.read_rounds(settings.folder)[(0, 0)]
    configs = {checkpoint.config_stem(config): config for config in settings.configs[1]}
    trials = [Trial(configs[result.stem], 3, 0) for result in recorded.results]
    outcome = RoundOutcome(0, 0, trials, list(recorded.results), [])
    (settings.folder / rounds.ROUNDS_FILE).unlink()
    recorder = report.RoundRecorder(settings)

    recorder.note_result(reused=True)
    recorder(outcome)
    assert rounds.read_rounds(settings.folder)[(0, 0)] == recorded
    assert not (settings.folder / "plots").exists()

    recorder.note_result(reused=False)
    recorder(outcome)
    assert sorted(path.name for path in (settings.folder / "plots").iterdir()) == sorted(plots.PLOT_NAMES.values())


def test_round_without_trials_recorded(copied):
    scratch, settings = copied
    first = rounds.read_rounds(settings.folder)[(1, 0)]
    failed = tuple(dataclasses.replace(result, status="failed", val_acc=None) for result in first.results)
    rounds.record_round(settings.folder, dataclasses.replace(first, results=failed, kept=()))
    recorder = report.RoundRecorder(settings)

    # Every trial of the round before failed, so none was promoted.
    recorder(RoundOutcome(1, 1, [], [], []))

    recorded = rounds.read_rounds(settings.folder)[(1, 1)]
    as_run = report.format_as_run(settings.brackets, report.survey(settings), [0, 0])
    assert recorded.epochs == 3
    assert recorded.results == ()
    assert re.search(r"s=1\s+3 x 1 \(3 failed\)\s+0 x 3\s+0\n", as_run), as_run
    assert re.search(r"s=0\s+2 x 3\s+0\n", as_run), as_run
