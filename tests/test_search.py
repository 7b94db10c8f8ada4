"""Tests of the Hyperband search: `search.Search` with a stub trainer, then hyperband.py end to end.

The stub is a tiny script that follows train.py's contract (flags in, one JSON result line out)
without importing torch, so a search of many trials takes a second. Its validation accuracy is a
known function of --lr and --epochs, so the tests can compute which configurations a round keeps.
The end-to-end tests run the real hyperband.py and train.py on tiny data, on the CPU.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import checkpoint
import launcher
import plan
import search
import space
from conftest import ROOT, environment_without_gpus


# ---------------------------------------------------------------- processes


def process_state(pid: int) -> tuple[str, int] | None:
    """Return the state letter and process group of `pid` from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in brackets may contain spaces, so split after its closing bracket.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def is_running(pid: int) -> bool:
    """Tell whether `pid` exists and is not a zombie waiting for its parent to reap it."""
    state = process_state(pid)
    return state is not None and state[0] != "Z"


def running_pids() -> list[int]:
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if is_running(pid)]


def group_members(group: int) -> list[int]:
    """List the running processes of process group `group`."""
    members = []
    for pid in running_pids():
        state = process_state(pid)
        if state is not None and state[1] == group:
            members.append(pid)
    return members


def processes_mentioning(text: str) -> list[int]:
    """List running processes other than this one whose command line contains `text`."""
    found = []
    for pid in running_pids():
        if pid == os.getpid():
            continue
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in command_line:
            found.append(pid)
    return found


def wait_until(condition, timeout: float, interval: float = 0.05) -> bool:
    """Call `condition` until it returns true or `timeout` seconds pass, and return whether it returned true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def send_signal(pids, signum: int) -> None:
    """Send `signum` to each of `pids`, skipping those that have exited meanwhile."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- the stub trainer


def stub_score(lr: float, epochs: int) -> float:
    """Return the validation accuracy that the stub reports, scrambled by --epochs so that rankings change."""
    return (lr * 7919 * epochs) % 0.9


STUB_TEMPLATE = '''\
"""Stand-in for train.py: the same flags and result line, without torch.

behaviours.json beside this script maps an --lr value to a misbehaviour: fail, usage, hang, talk,
disk (a full disk), oom (out of memory), flaky (killed by a signal on its first run) or slow
(2 s before its result).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


{score_source}

parser = argparse.ArgumentParser()
parser.add_argument("--lr", required=True)
parser.add_argument("--epochs", type=int, required=True)
args, _ = parser.parse_known_args()
behaviours_path = HERE / "behaviours.json"
behaviours = json.loads(behaviours_path.read_text()) if behaviours_path.exists() else {{}}
behaviour = behaviours.get(args.lr, "ok")

if behaviour == "fail":
    print("stub: simulated crash", file=sys.stderr)
    sys.exit(1)
if behaviour == "usage":
    print("stub: error: simulated usage error", file=sys.stderr)
    sys.exit(2)
if behaviour == "disk":
    print("error: saving a checkpoint in /scratch failed: No space left on device", file=sys.stderr)
    sys.exit(5)
if behaviour == "oom":
    print("error: out of memory with --batch-size 256 on cuda", file=sys.stderr)
    sys.exit(6)
if behaviour == "flaky" and not (HERE / "flaky.done").exists():
    # Killed by a signal on its first run only, as by the OOM killer or a lost node.
    (HERE / "flaky.done").write_text("")
    os.kill(os.getpid(), 9)
if behaviour == "hang":
    # A grandchild in the same process group, to check that the whole group is stopped.
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    temp = HERE / "hang.pids.tmp"
    temp.write_text(f"{{os.getpid()}} {{grandchild.pid}}")
    os.replace(temp, HERE / "hang.pids")
    time.sleep(60)
    sys.exit(0)
if behaviour == "slow":
    time.sleep(2)
if behaviour == "talk":
    line = "x" * 1023 + "\\n"
    for _ in range({talk_lines}):
        sys.stdout.write(line)
        sys.stderr.write(line)

score = stub_score(float(args.lr), args.epochs)
result = {{"status": "ok", "epoch": args.epochs, "val_acc": score, "val_loss": 1.0 - score, "checkpoint": "",
          "epochs_trained": args.epochs}}
print(json.dumps(result), flush=True)
'''

TALK_LINES = 4096  # lines of 1 KiB, so 4 MiB on stdout and 4 MiB on stderr


def write_stub(folder: Path, behaviours: dict[str, str] | None = None) -> Path:
    """Write the stub trainer into `folder`. `behaviours` maps a formatted --lr to a misbehaviour of the stub."""
    path = folder / "stub_train.py"
    path.write_text(STUB_TEMPLATE.format(score_source=inspect.getsource(stub_score), talk_lines=TALK_LINES))
    if behaviours:
        (folder / "behaviours.json").write_text(json.dumps(behaviours))
    return path


class StubLauncher(launcher.LocalLauncher):
    """Launcher that starts the stub in place of train.py and records every start."""

    def __init__(self, stub: Path):
        self.stub = stub
        self.launches: list[tuple[str, int]] = []  # (--lr as passed, --epochs)
        self.trials: list[launcher.RunningTrial] = []

    def start(self, argv, slot, stdout_path, stderr_path):
        argv = [argv[0], str(self.stub), *argv[2:]]
        self.launches.append((argv[argv.index("--lr") + 1], int(argv[argv.index("--epochs") + 1])))
        trial = super().start(argv, slot, stdout_path, stderr_path)
        self.trials.append(trial)
        return trial


def draw_configs(brackets: list[plan.Bracket], max_epochs: int, seed: int = 0) -> list[list[checkpoint.Config]]:
    """Draw each bracket's configurations from the default space, as hyperband.py does."""
    rng = random.Random(seed)
    dimensions = space.default_space(max_epochs)
    base = checkpoint.Config(model="small", width=0.5)
    return [space.sample_configs(dimensions, bracket.rounds[0].configs, rng, base) for bracket in brackets]


def lr_flag(config: checkpoint.Config) -> str:
    return checkpoint.format_number(config.lr)


def make_search(tmp_path: Path, brackets, configs, stub_launcher: StubLauncher, workers: int = 2,
                **options) -> search.Search:
    slots = launcher.make_slots([], 1, workers, 2)
    return search.Search(brackets, configs, eta=3 if "eta" not in options else options.pop("eta"),
                         scratch=tmp_path / "scratch", data_dir=None, folder=tmp_path / "search", slots=slots,
                         launcher=stub_launcher, **options)


def stub_setup(tmp_path: Path, behaviour_of: dict[tuple[int, int], str] | None = None):
    """Plan R=3, eta=3 (rounds 3 x 1 then 1 x 3, and 2 x 3), draw configurations and write the stub.

    `behaviour_of` maps (bracket index, configuration index) to a stub misbehaviour.
    """
    brackets = plan.plan_brackets(3, 3)
    configs = draw_configs(brackets, 3)
    behaviours = {lr_flag(configs[b][k]): name for (b, k), name in (behaviour_of or {}).items()}
    stub_launcher = StubLauncher(write_stub(tmp_path, behaviours))
    return brackets, configs, stub_launcher


def every_config(configs) -> list[checkpoint.Config]:
    return [config for bracket in configs for config in bracket]


# ---------------------------------------------------------------- search with the stub


def test_failing_trial_ranked_last(tmp_path):
    brackets, configs, stub_launcher = stub_setup(tmp_path, {(0, 1): "fail"})
    failing = configs[0][1]

    rows = make_search(tmp_path, brackets, configs, stub_launcher).run()

    assert len(rows) == len(every_config(configs))
    assert rows[-1].config == failing
    assert rows[-1].result.status == "failed"
    assert rows[-1].result.val_acc is None
    assert "exit code 1" in rows[-1].result.message
    assert "simulated crash" in rows[-1].result.message
    assert all(row.result.status == "ok" for row in rows[:-1])


def test_hanging_trial_times_out(tmp_path):
    brackets, configs, stub_launcher = stub_setup(tmp_path, {(0, 1): "hang"})
    hanging = configs[0][1]
    pids_path = tmp_path / "hang.pids"
    try:
        started = time.monotonic()
        rows = make_search(tmp_path, brackets, configs, stub_launcher, trial_timeout=1.5).run()
        seconds = time.monotonic() - started

        assert seconds < 30
        assert len(rows) == len(every_config(configs))
        assert rows[-1].config == hanging
        assert rows[-1].result.status == "timeout"
        assert all(row.result.status == "ok" for row in rows[:-1])

        assert pids_path.exists(), "the hanging stub never started"
        child, grandchild = map(int, pids_path.read_text().split())
        assert wait_until(lambda: not is_running(child), timeout=5), f"stub {child} still runs"
        assert wait_until(lambda: not is_running(grandchild), timeout=5), f"its grandchild {grandchild} still runs"
        assert wait_until(lambda: not group_members(child), timeout=5), f"group {child}: {group_members(child)}"
    finally:
        if pids_path.exists():
            send_signal(map(int, pids_path.read_text().split()), signal.SIGKILL)


def test_talkative_trial_result_read(tmp_path):
    brackets, configs, stub_launcher = stub_setup(tmp_path, {(0, 0): "talk", (1, 1): "talk"})
    talkative = [configs[0][0], configs[1][1]]

    # A child blocked on a full pipe would time out instead of hanging the test.
    rows = make_search(tmp_path, brackets, configs, stub_launcher, trial_timeout=20).run()

    by_config = {row.config: row.result for row in rows}
    for config in talkative:
        result = by_config[config]
        assert result.status == "ok", result.message
        assert result.val_acc == checkpoint.round_accuracy(stub_score(config.lr, result.epochs))
    talk_logs = [path for path in (tmp_path / "search" / "logs").iterdir() if path.stat().st_size > 4 * 2**20]
    assert talk_logs, "no log received the stub's 4 MiB of output"


def test_usage_error_stops_search(tmp_path):
    brackets, configs, stub_launcher = stub_setup(tmp_path, {(0, 0): "hang", (0, 1): "usage"})
    pids_path = tmp_path / "hang.pids"
    try:
        # The timeout only ends the test sooner if exit code 2 goes unnoticed.
        with pytest.raises(search.SearchError, match="exit code 2"):
            make_search(tmp_path, brackets, configs, stub_launcher, trial_timeout=20).run()

        # With two slots, the hanging and the rejected trial started and the third never did.
        assert len(stub_launcher.launches) == 2
        for trial in stub_launcher.trials:
            assert trial.process.poll() is not None, f"trial {trial.process.pid} still runs"
        assert wait_until(pids_path.exists, timeout=5), "the hanging stub never started"
        child, grandchild = map(int, pids_path.read_text().split())
        assert wait_until(lambda: not group_members(child), timeout=5), f"group {child}: {group_members(child)}"
    finally:
        if pids_path.exists():
            send_signal(map(int, pids_path.read_text().split()), signal.SIGKILL)


def test_full_disk_stops_after_retries(tmp_path):
    brackets, configs, stub_launcher = stub_setup(tmp_path, {(0, 1): "disk"})
    full = lr_flag(configs[0][1])

    with pytest.raises(search.SearchError, match="saving a checkpoint failed.*persisted through 2 retries"):
        make_search(tmp_path, brackets, configs, stub_launcher, retries=2).run()

    assert [lr for lr, _ in stub_launcher.launches].count(full) == 3  # the first run and 2 retries
    journal = tmp_path / "search" / "results.jsonl"
    assert full not in (journal.read_text() if journal.exists() else "")


def test_killed_trial_retried(tmp_path):
    brackets, configs, stub_launcher = stub_setup(tmp_path, {(0, 1): "flaky"})
    flaky = configs[0][1]

    rows = make_search(tmp_path, brackets, configs, stub_launcher).run()

    assert all(row.result.status == "ok" for row in rows)
    assert [lr for lr, epochs in stub_launcher.launches if epochs == 1].count(lr_flag(flaky)) == 2
    assert (tmp_path / "flaky.done").exists()


def test_out_of_memory_ranked_last(tmp_path):
    brackets, configs, stub_launcher = stub_setup(tmp_path, {(1, 0): "oom"})
    rows = make_search(tmp_path, brackets, configs, stub_launcher).run()

    assert rows[-1].config == configs[1][0]
    assert rows[-1].result.status == "oom"
    assert all(row.result.status == "ok" for row in rows[:-1])
    second = StubLauncher(stub_launcher.stub)
    make_search(tmp_path, brackets, configs, second).run()
    assert second.launches == []  # out of memory is final for the configuration, like diverging


def test_journal_restart_launches_nothing(tmp_path):
    brackets, configs, first_launcher = stub_setup(tmp_path)
    first_rows = make_search(tmp_path, brackets, configs, first_launcher).run()
    journal_text = (tmp_path / "search" / "results.jsonl").read_text()

    second_launcher = StubLauncher(first_launcher.stub)
    second_rows = make_search(tmp_path, brackets, configs, second_launcher).run()

    def summary(rows):
        return [(row.result.stem, row.result.epochs, row.result.val_acc, row.result.status) for row in rows]

    assert len(first_launcher.launches) == 6  # 3 x 1 and 1 x 3, then 2 x 3
    assert second_launcher.launches == []
    assert summary(second_rows) == summary(first_rows)
    assert (tmp_path / "search" / "results.jsonl").read_text() == journal_text


def test_brackets_share_slots(tmp_path):
    # While bracket 0's slow trial occupies one slot, its round cannot end, so bracket 1's trials run
    # in the other slot instead of waiting for it.
    brackets, configs, stub_launcher = stub_setup(tmp_path, {(0, 2): "slow"})
    rows = make_search(tmp_path, brackets, configs, stub_launcher).run()

    second_bracket = {lr_flag(config) for config in configs[1]}
    order = [lr in second_bracket for lr, _ in stub_launcher.launches]
    assert order == [False, False, False, True, True, False]
    assert stub_launcher.launches[-1][1] == 3  # bracket 0's second round, after its slow trial
    assert len(rows) == 5


@pytest.mark.parametrize("max_epochs, eta", [(9, 3), (8, 2)])
def test_halving_keeps_best_configs(tmp_path, max_epochs, eta):
    # The most exploratory bracket has the most rounds: 9 x 1, 3 x 3, 1 x 9 and 8 x 1, 4 x 2, 2 x 4, 1 x 8.
    bracket = plan.plan_brackets(max_epochs, eta)[0]
    configs = draw_configs([bracket], max_epochs)[0]
    stub_launcher = StubLauncher(write_stub(tmp_path))

    make_search(tmp_path, [bracket], [configs], stub_launcher, eta=eta).run()

    survivors = list(configs)
    for round_ in bracket.rounds:
        launched = sorted(lr for lr, epochs in stub_launcher.launches if epochs == round_.epochs)
        assert launched == sorted(map(lr_flag, survivors)), f"round to {round_.epochs} epochs"
        scores = {config: checkpoint.round_accuracy(stub_score(config.lr, round_.epochs)) for config in survivors}
        assert len(set(scores.values())) == len(scores), "tied scores make the expected choice ambiguous"
        survivors = sorted(survivors, key=lambda config: -scores[config])[:len(survivors) // eta]
    assert len(stub_launcher.launches) == sum(round_.configs for round_ in bracket.rounds)


def test_trial_log_names_keep_epochs(tmp_path):
    brackets, configs, stub_launcher = stub_setup(tmp_path)

    make_search(tmp_path, brackets, configs, stub_launcher).run()

    launched = {(lr, epochs) for lr, epochs in stub_launcher.launches}
    expected = {f"{checkpoint.config_stem(config)}_ep{epochs:04d}.log" for config in every_config(configs)
                for epochs in (1, 3) if (lr_flag(config), epochs) in launched}
    logs = {path.name for path in (tmp_path / "search" / "logs").glob("*.log")}
    assert logs == expected


# ---------------------------------------------------------------- hyperband.py end to end


SEARCH_FLAGS = ["--model", "small", "--width", "0.5", "--max-epochs", "3", "--eta", "3", "--workers", "2"]
CONFIG_COLUMNS = [field for field in checkpoint.Config.__dataclass_fields__]


def hyperband_command(scratch: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "hyperband.py"), *SEARCH_FLAGS, "--data-dir", str(data_dir),
            "--scratch", str(scratch), *extra]


def run_hyperband(scratch: Path, data_dir: Path, *extra: str, timeout: float = 180):
    return subprocess.run(hyperband_command(scratch, data_dir, *extra), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=environment_without_gpus())


def search_folder_of(scratch: Path) -> Path:
    folders = list((scratch / "searches").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def printed_leaderboard(stdout: str) -> list[str]:
    """Return the leaderboard's table rows as printed, without the header and its timing."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "epochs"])
    rows = []
    for line in lines[header + 1:]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def leaderboard_columns(path: Path) -> list[dict]:
    """Read leaderboard.csv without the columns that may differ between equal searches (paths and val_loss)."""
    with open(path, newline="") as file:
        return [{key: row[key] for key in ["rank", "status", "epochs", "val_acc"] + CONFIG_COLUMNS}
                for row in csv.DictReader(file)]


def file_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Map every file under `folder` to its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, cifar_dir, space_file):
    """Run one uninterrupted search, and return its scratch folder, its output and its leaderboard rows."""
    scratch = tmp_path_factory.mktemp("finished") / "scratch"
    completed = run_hyperband(scratch, cifar_dir, "--space", str(space_file))
    folder = search_folder_of(scratch) if (scratch / "searches").is_dir() else None
    rows = leaderboard_columns(folder / "leaderboard.csv") if folder and (folder / "leaderboard.csv").exists() else []
    return scratch, completed, rows


def test_full_search_writes_leaderboard(finished_search):
    scratch, completed, rows = finished_search

    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    printed = printed_leaderboard(completed.stdout)
    # Five configurations: 3 in bracket s=1 and 2 in bracket s=0, with distinct learning rates.
    assert len(printed) == 5
    assert len(rows) == 5
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert all(row["status"] == "ok" for row in rows)
    assert sorted(row["epochs"] for row in rows) == ["1", "1", "3", "3", "3"]
    assert all(row["batch_size"] == "32" for row in rows)
    accuracies = [float(row["val_acc"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)


def test_rerun_launches_no_trial(finished_search, cifar_dir, space_file):
    scratch, first, _ = finished_search
    folder = search_folder_of(scratch)
    before = file_snapshot(scratch / "checkpoints")
    logs_before = file_snapshot(folder / "logs")
    journal_before = (folder / "results.jsonl").read_bytes()
    leaderboard_before = (folder / "leaderboard.csv").read_text()
    # What a driver killed while writing its own files leaves behind
    stale = [folder / ".rounds.json.tmp-999999", folder / "plots" / ".loss.png.tmp-999999"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")

    second = run_hyperband(scratch, cifar_dir, "--space", str(space_file))

    assert second.returncode == 0, second.stderr
    assert not any(path.exists() for path in stale)
    assert printed_leaderboard(second.stdout) == printed_leaderboard(first.stdout)
    assert file_snapshot(scratch / "checkpoints") == before
    assert file_snapshot(folder / "logs") == logs_before
    assert (folder / "results.jsonl").read_bytes() == journal_before
    assert (folder / "leaderboard.csv").read_text() == leaderboard_before


def epochs_trained_per_config(logs: Path) -> dict[str, list[int]]:
    """Collect, per learning rate in the log names, the epoch numbers that train.py logged as trained."""
    trained: dict[str, list[int]] = {}
    for path in logs.glob("*.log"):
        lr = re.search(r"_lr([^_]+)_lrd", path.name).group(1)
        numbers = [int(match) for match in re.findall(r"\bepoch (\d+)/\d+ ", path.read_text())]
        trained.setdefault(lr, []).extend(numbers)
    return trained


def first_epoch_in_progress(scratch: Path) -> bool:
    """Tell whether a running train.py holds a configuration's lock before any checkpoint of it exists.

    The lock file contains the id of the process that took it last, and it stays after release.
    """
    for path in scratch.glob("checkpoints/*/*/.*.lock"):
        stem = path.name[1:-len(".lock")]
        holder = path.read_text().strip()
        if holder.isdigit() and is_running(int(holder)) and not any(path.parent.glob(f"{stem}_ep*.pt")):
            return True
    return False


def test_killed_search_resumes_identically(tmp_path, finished_search, cifar_dir, space_file):
    _, _, uninterrupted_rows = finished_search
    scratch = tmp_path / "scratch"
    command = hyperband_command(scratch, cifar_dir, "--space", str(space_file))
    try:
        # Kill the driver once a result is journaled and a trial is in its first epoch, so the round is half done.
        with open(tmp_path / "killed.out", "w") as stdout, open(tmp_path / "killed.err", "w") as stderr:
            driver = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=ROOT, env=environment_without_gpus(),
                                      start_new_session=True)

        def journal_has_a_result() -> bool:
            return any(path.stat().st_size > 0 for path in scratch.glob("searches/*/results.jsonl"))

        def mid_round() -> bool:
            return journal_has_a_result() and first_epoch_in_progress(scratch)

        assert wait_until(lambda: mid_round() or driver.poll() is not None, timeout=120, interval=0.02), \
            "no trial was training after a journaled result within 120 s"
        assert driver.poll() is None, "the driver finished before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()

        # The driver's trials outlive it. Pausing them makes sure they still hold their locks when the
        # restarted driver starts the same trials.
        orphans = processes_mentioning(str(scratch))
        send_signal(orphans, signal.SIGSTOP)
        with open(tmp_path / "resumed.out", "w") as stdout, open(tmp_path / "resumed.err", "w") as stderr:
            resumed = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=ROOT, env=environment_without_gpus(),
                                       start_new_session=True)

        def trial_waits_for_lock() -> bool:
            return any("waiting for process" in path.read_text() for path in scratch.glob("searches/*/logs/*.log"))

        wait_until(lambda: trial_waits_for_lock() or resumed.poll() is not None, timeout=60)
        send_signal(orphans, signal.SIGCONT)
        resumed.wait(timeout=180)

        assert resumed.returncode == 0, (tmp_path / "resumed.err").read_text()
        folder = search_folder_of(scratch)
        assert leaderboard_columns(folder / "leaderboard.csv") == uninterrupted_rows

        # The orphans must end by themselves, and only then are their epochs all in the logs.
        assert wait_until(lambda: not processes_mentioning(str(scratch)), timeout=30), \
            f"processes left running: {processes_mentioning(str(scratch))}"
        trained = epochs_trained_per_config(folder / "logs")
        for row in uninterrupted_rows:
            lr = checkpoint.format_number(float(row["lr"]))
            assert sorted(trained.pop(lr, [])) == list(range(1, int(row["epochs"]) + 1)), f"lr {lr}"
        assert trained == {}, "logs of configurations missing from the leaderboard"
    finally:
        # SIGKILL ends paused processes too.
        send_signal(processes_mentioning(str(scratch)), signal.SIGKILL)


def test_search_without_any_score_exits_1(tmp_path, cifar_dir, space_file):
    completed = run_hyperband(tmp_path / "scratch", cifar_dir, "--space", str(space_file), "--trial-timeout", "0.2")
    assert completed.returncode == 1, completed.stderr
    assert "No configuration finished with a validation score" in completed.stderr
    assert "Best checkpoint" not in completed.stdout
    assert (search_folder_of(tmp_path / "scratch") / "leaderboard.csv").exists()


def test_dry_run_writes_nothing(tmp_path, cifar_dir):
    scratch = tmp_path / "scratch"

    completed = run_hyperband(scratch, cifar_dir, "--dry-run")

    assert completed.returncode == 0, completed.stderr
    table = completed.stdout
    assert re.search(r"s=1\s+3 x 1\s+1 x 3\s+5\s+6", table), table
    assert re.search(r"s=0\s+2 x 3\s+6\s+6", table), table
    assert re.search(r"total\s+11\s+12", table), table
    assert not scratch.exists()


INVALID_INPUTS = {
    "max-epochs-zero": (["--max-epochs", "0"], None, "--max-epochs"),
    "eta-one": (["--eta", "1"], None, "--eta"),
    "workers-zero": (["--workers", "0"], None, "--workers"),
    "per-gpu-on-cpu": (["--per-gpu", "2"], None, "--per-gpu 2"),
    "width-negative": (["--width", "-1"], None, "--width"),
    "unknown-model": (["--model", "nosuchmodel"], None, "--model"),
    "space-unknown-key": ([], "learning-rate = 0.1\n", "learning-rate"),
    "space-inverted-range": ([], "[lr]\nlog-uniform = [0.4, 0.01]\n", "inverted range"),
}


@pytest.mark.parametrize("case", INVALID_INPUTS)
def test_invalid_input_exits_2(tmp_path, cifar_dir, case):
    flags, space_text, named = INVALID_INPUTS[case]
    if space_text is not None:
        (tmp_path / "space.toml").write_text(space_text)
        flags = ["--space", str(tmp_path / "space.toml")]
    scratch = tmp_path / "scratch"

    completed = run_hyperband(scratch, cifar_dir, *flags)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, completed.stderr
    assert flags[0] in errors[0]
    assert named in errors[0]
    assert not scratch.exists()


def test_dry_run_checks_space(tmp_path, cifar_dir):
    inverted = tmp_path / "inverted.toml"
    inverted.write_text("[lr]\nuniform = [0.4, 0.1]\n")

    completed = run_hyperband(tmp_path / "scratch", cifar_dir, "--dry-run", "--space", str(inverted))

    assert completed.returncode == 2
    assert "inverted range" in completed.stderr
    assert "Traceback" not in completed.stderr
