"""compare.py end to end on the tiny data, as real subprocesses: report, rerun, SIGKILL, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import checkpoint
import compare
from conftest import ROOT

# One configuration per search (R = 2 with eta = 3 plans a single bracket of one configuration), so
# that the whole comparison runs in seconds on two cores.
SETTINGS = ["--model-a", "small", "--width-a", "0.5", "--model-b", "small", "--width-b", "0.25",
            "--max-epochs", "2", "--eta", "3", "--repeats", "2", "--workers", "2", "--scratch", "scratch"]


def compare_command(data_dir: Path, space: Path, extra: list[str] = ()) -> list[str]:
    return [sys.executable, str(ROOT / "compare.py"), *SETTINGS, "--space-a", str(space), "--space-b", str(space),
            "--data-dir", str(data_dir), *extra]


def run_compare(folder: Path, data_dir: Path, space: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    # The scratch folder is relative to `folder`, so that two folders give reports with the same commands.
    return subprocess.run(compare_command(data_dir, space, extra), cwd=folder, capture_output=True, text=True,
                          timeout=300)


def report_of(folder: Path) -> Path:
    (path,) = (folder / "scratch" / "comparisons").glob("*/report.md")
    return path


def is_repeat_file(path: Path) -> bool:
    """Tell whether `path` belongs to a retrained run: the searches train with seed 0, the retrainings never."""
    if path.name.endswith(checkpoint.TEST_RESULT_SUFFIX):
        return True
    parsed = checkpoint.parse_name(path.name)
    if parsed is not None:
        return parsed.config.seed != 0
    return path.name.endswith(checkpoint.HISTORY_SUFFIX) and "_seed0_" not in path.name


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cifar_dir, space_file) -> Path:
    """A folder with a finished comparison, run once without interruption."""
    folder = tmp_path_factory.mktemp("finished")
    completed = run_compare(folder, cifar_dir, space_file)
    assert completed.returncode == 0, completed.stderr
    return folder


# ---------------------------------------------------------------- end to end


def test_report_lists_runs_and_verdict(finished):
    text = report_of(finished).read_text()
    assert "## Verdict" in text
    assert "P(small w0.5 > small w0.25)" in text
    assert "95% CI" in text
    assert "this tool's choice" in text
    assert "these intervals are wide" in text
    assert text.count("python hyperband.py ") == 2
    assert text.count("python train.py ") == 4
    assert text.count(" --test") == 4


def test_report_matches_stored_results(finished):
    text = report_of(finished).read_text()
    stored = [json.loads(path.read_text()) for path in (finished / "scratch").rglob("*.test.json")]
    assert len(stored) == 4
    for result in stored:
        assert result["status"] == "ok"
        assert f"| {result['config']['seed']} | 0 | ok | {result['test_acc']:.4f} |" in text


def test_report_has_plot(finished):
    pytest.importorskip("matplotlib")
    plot = report_of(finished).parent / "test_accuracy.png"
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "![Test accuracy of every run](test_accuracy.png)" in report_of(finished).read_text()


def test_repeats_never_reuse_search_run(finished):
    seeds = {checkpoint.parse_name(path.name).config.seed for path in (finished / "scratch").rglob("*.pt")}
    assert 0 in seeds  # the searches' runs
    assert len(seeds) == 3  # and two retrainings, shared by both models


def test_rerun_trains_nothing(finished, cifar_dir, space_file):
    report = report_of(finished)
    before = report.read_bytes()
    files = {path: path.stat().st_mtime_ns for path in (finished / "scratch" / "checkpoints").rglob("*")}
    started = time.monotonic()
    completed = run_compare(finished, cifar_dir, space_file)
    assert completed.returncode == 0, completed.stderr
    assert time.monotonic() - started < 30
    assert report.read_bytes() == before
    assert completed.stdout.startswith(before.decode())
    assert "retraining" not in completed.stderr
    assert {path: path.stat().st_mtime_ns for path in (finished / "scratch" / "checkpoints").rglob("*")} == files


def test_sigkill_then_rerun_same_report(finished, tmp_path, cifar_dir, space_file):
    # Keep the finished searches and drop every retrained run, so that the killed comparison
    # starts at its retrainings.
    shutil.copytree(finished / "scratch", tmp_path / "scratch", ignore=lambda folder, names: [
        name for name in names if name == "comparisons" or is_repeat_file(Path(folder) / name)])
    driver = subprocess.Popen(compare_command(cifar_dir, space_file), cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "scratch").rglob("*.test.json")):
            assert driver.poll() is None, "compare.py ended before it was killed"
            assert time.monotonic() < deadline, "no retraining finished in time"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        driver.kill()
    assert len(list((tmp_path / "scratch").rglob("*.test.json"))) < 4

    completed = run_compare(tmp_path, cifar_dir, space_file)
    assert completed.returncode == 0, completed.stderr
    assert report_of(tmp_path).read_bytes() == report_of(finished).read_bytes()


def test_search_repeats_plans_seeds(tmp_path, space_file):
    args = compare.build_parser().parse_args(SETTINGS + ["--space-a", str(space_file), "--space-b", str(space_file),
                                                         "--search-repeats", "2", "--seed", "5"])
    specs = compare.check_arguments(args, compare.build_parser())
    searches = compare.plan_searches(args, specs, tmp_path)
    assert [(search.spec.side, search.index, search.seed) for search in searches] == [
        ("a", 0, 5), ("a", 1, 6), ("b", 0, 5), ("b", 1, 6)]
    assert len({search.folder for search in searches}) == 4
    for search in searches:
        assert search.argv[search.argv.index("--seed") + 1] == str(search.seed)
        assert search.folder.parent == tmp_path / "searches"


def test_search_repeats_report_shows_both(tmp_path):
    import compare_report

    # Model A scores 0.6 + i / 100 in run i of search 0, and 0.5 in search 1; model B scores less.
    settings = compare_report.Settings(labels=("A", "B"), dataset="cifar10", max_epochs=2, eta=3, seed=0,
                                       val_fraction=0.1, repeats=3, search_repeats=2, resample_split=False)
    runs = []
    for label, base in (("A", 0.6), ("B", 0.4)):
        for search, count in ((0, 3), (1, 1)):
            for index in range(count):
                accuracy = base + index / 100 if search == 0 else base - 0.1
                config = checkpoint.Config(model="small", seed=index + 1)
                stored = {"status": "ok", "test_acc": accuracy, "test_loss": 1.0}
                runs.append(compare_report.RunResult(label, search, index, config, 2, stored, "python train.py"))
    winners = [compare_report.Winner(label, search, search, checkpoint.Config(model="small"), 2, 0.5, tmp_path,
                                     "python hyperband.py") for label in "AB" for search in (0, 1)]
    path, text = compare_report.write_report(tmp_path, settings, winners, runs)
    assert path.read_text() == text
    assert "A beats B with probability 1.00 (95% CI 1.00 to 1.00)." in text
    assert "Estimate from 2 searches, one retraining of each winner." in text
    assert "| 3 retrainings of one search's winner | 1.000 | 1.000 to 1.000 |" in text
    assert "| 2 searches, one retraining of each winner | 1.000 | 1.000 to 1.000 |" in text
    assert "The two estimates of P(A > B) differ by +0.000." in text
    assert text.count("python train.py") == 8


# ---------------------------------------------------------------- seeds of the retrained runs


def search_run(seed: int, index: int = 0) -> compare.SearchRun:
    spec = compare.ModelSpec("a", "small", "small", 0.5, None, "")
    return compare.SearchRun(spec, index, seed, [], Path("unused"))


def test_repeat_seeds_deterministic_and_distinct():
    seeds = compare.repeat_seeds(0, search_run(0), 20, resample_split=False)
    assert seeds == compare.repeat_seeds(0, search_run(0), 20, resample_split=False)
    assert len({seed for seed, _ in seeds}) == 20
    assert all(split == 0 for _, split in seeds)
    assert seeds != compare.repeat_seeds(1, search_run(0), 20, resample_split=False)
    assert seeds != compare.repeat_seeds(0, search_run(1, index=1), 20, resample_split=False)


def test_repeat_seeds_skip_search_run():
    first_seed, _ = compare.repeat_seeds(0, search_run(0), 1, resample_split=False)[0]
    # A search whose seed equals the first derived seed must not get its own run back.
    seeds = compare.repeat_seeds(0, search_run(first_seed), 1, resample_split=False)
    assert seeds[0] != (first_seed, 0)


def test_repeat_seeds_resample_split_nonzero():
    pairs = compare.repeat_seeds(0, search_run(0), 10, resample_split=True)
    assert all(split >= 1 for _, split in pairs)
    assert len({split for _, split in pairs}) == 10


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, message", [
    (["--repeats", "1"], "invalid --repeats 1"),
    (["--search-repeats", "0"], "invalid --search-repeats 0"),
    (["--max-epochs", "0"], "invalid --max-epochs 0"),
    (["--eta", "1"], "invalid --eta 1"),
    (["--width-b", "0.5"], "models A and B are the same"),
    (["--width-b", "-1"], "invalid --width-b -1"),
    (["--label-a", "x", "--label-b", "x"], "same label 'x'"),
])
def test_invalid_input_exits_2(tmp_path, cifar_dir, space_file, extra, message):
    completed = run_compare(tmp_path, cifar_dir, space_file, extra)
    assert completed.returncode == 2
    assert message in completed.stderr
    assert not (tmp_path / "scratch").exists()


def test_missing_space_file_exits_2(tmp_path, cifar_dir, space_file):
    completed = run_compare(tmp_path, cifar_dir, space_file, ["--space-b", "missing.toml"])
    assert completed.returncode == 2
    assert "invalid --space-b missing.toml: file not found" in completed.stderr


def test_unknown_model_exits_2(tmp_path, cifar_dir, space_file):
    completed = run_compare(tmp_path, cifar_dir, space_file, ["--model-b", "nosuchmodel"])
    assert completed.returncode == 2
    assert "nosuchmodel" in completed.stderr
    assert "Traceback" not in completed.stderr
