"""Kill a real search at random moments and check that it still reaches the uninterrupted run's result.

    python tools/soak.py --kills 10                      # about 2 minutes on 2 cores
    python tools/soak.py --kills 100 --max-epochs 81     # the long run quoted in docs/RELIABILITY.md

It makes tiny CIFAR-10 data, runs one search without interruption as the reference, then runs the
same search again while sending SIGKILL, at seeded random moments, either to the driver or to one
of its running train.py children. After each kill of the driver it starts the same command again;
a killed child is retried by the driver itself. At the end it checks that:

- the leaderboard equals the reference's (rank, status, epochs, validation accuracy, configuration);
- every checkpoint file loads with torch.load(weights_only=True);
- no hyperband.py or train.py process of either run is left;
- the epochs trained in total exceed the reference's by at most one per kill.

It prints those figures and exits with 1 if any check fails. Linux only: it finds the children
through /proc.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tiny_cifar import write_cifar10

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402  (needs the path set above)
EPOCH_LINE = re.compile(r" INFO epoch (\d+)/\d+ ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=cli.HelpFormatter)
    parser.add_argument("--kills", type=int, default=10, metavar="N", help="SIGKILLs to send")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the kill moments and targets")
    parser.add_argument("--max-epochs", type=int, default=9, metavar="R", help="the search's --max-epochs")
    parser.add_argument("--eta", type=int, default=3, metavar="ETA", help="the search's --eta")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="the search's --workers")
    parser.add_argument("--interval", type=float, nargs=2, default=(1.0, 6.0), metavar=("LOW", "HIGH"),
                        help="seconds between kills, drawn uniformly from [LOW, HIGH] (default: 1 6)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help="folder for the data and both runs (default: a new temporary folder)")
    parser.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                        help="give up when the killed run has not finished after this long")
    return parser


def search_command(args: argparse.Namespace, data_dir: Path, scratch: Path) -> list[str]:
    return [sys.executable, str(ROOT / "hyperband.py"), "--model", "small", "--width", "0.5",
            "--max-epochs", str(args.max_epochs), "--eta", str(args.eta), "--workers", str(args.workers),
            "--seed", str(args.seed), "--data-dir", str(data_dir), "--scratch", str(scratch), "--quiet"]


# ---------------------------------------------------------------- processes


def processes_of(scratch: Path) -> dict[int, str]:
    """Return {pid: "driver" or "trial"} for every live process of the run under `scratch`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # the process ended while we looked
        if state == "Z" or str(scratch).encode() not in arguments:
            continue
        if any(argument.endswith(b"train.py") for argument in arguments):
            found[int(entry.name)] = "trial"
        elif any(argument.endswith(b"hyperband.py") for argument in arguments):
            found[int(entry.name)] = "driver"
    return found


def run_with_kills(command: list[str], scratch: Path, args: argparse.Namespace, log_file) -> dict:
    """Run `command` to the end, sending `args.kills` SIGKILLs on the way; return the counts."""
    rng = random.Random(args.seed)
    counts = {"kills": 0, "driver kills": 0, "trial kills": 0, "driver starts": 0}
    deadline = time.monotonic() + args.timeout
    while True:
        driver = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        counts["driver starts"] += 1
        while driver.poll() is None:
            if time.monotonic() > deadline:
                driver.kill()
                raise TimeoutError(f"the killed run did not finish within {args.timeout:g} s")
            if counts["kills"] >= args.kills:
                time.sleep(0.2)
                continue
            wake = time.monotonic() + rng.uniform(*args.interval)
            while driver.poll() is None and time.monotonic() < wake:
                time.sleep(0.05)
            if driver.poll() is not None:
                break
            trials = sorted(pid for pid, kind in processes_of(scratch).items() if kind == "trial")
            if trials and rng.random() < 0.5:
                target, kind = rng.choice(trials), "trial"
            else:
                target, kind = driver.pid, "driver"
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it ended on its own just now
            counts["kills"] += 1
            counts[f"{kind} kills"] += 1
            print(f"kill {counts['kills']}: {kind} {target}", file=sys.stderr, flush=True)
        driver.wait()
        if driver.returncode == 0:
            return counts
        if driver.returncode != -signal.SIGKILL:
            print(f"driver exited with code {driver.returncode}; starting it again", file=sys.stderr, flush=True)


def wait_for_no_processes(scratch: Path, timeout: float = 60) -> int:
    """Wait for the run's processes to end; return how many are left after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while processes_of(scratch) and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(processes_of(scratch))


# ---------------------------------------------------------------- checks


def read_leaderboard(scratch: Path) -> list[dict]:
    (path,) = scratch.glob("searches/*/leaderboard.csv")
    with open(path) as file:
        rows = list(csv.DictReader(file))
    return [{key: value for key, value in row.items() if key not in ("checkpoint", "val_loss")} for row in rows]


def epochs_trained(scratch: Path) -> int:
    """Count the per-epoch lines in every trial log: each is one epoch trained and validated."""
    return sum(len(EPOCH_LINE.findall(path.read_text(errors="replace")))
               for path in scratch.glob("searches/*/logs/*.log"))


def checkpoints_loaded(scratch: Path) -> tuple[int, list[str]]:
    """Load every checkpoint; return how many there are and the errors of those that fail."""
    paths = sorted(scratch.glob("checkpoints/**/*.pt"))
    errors = []
    for path in paths:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any failure to load is what this check looks for
            errors.append(f"{path}: {error}")
    return len(paths), errors


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = write_cifar10(workdir / "data", images_per_batch=100, seed=args.seed)
    reference, killed = workdir / "reference", workdir / "killed"
    print(f"soak: {args.kills} kills, seed {args.seed}, work folder {workdir}", file=sys.stderr, flush=True)

    # The reference: the same command, never interrupted
    started = time.monotonic()
    with open(workdir / "reference.log", "w") as log_file:
        subprocess.run(search_command(args, data_dir, reference), stdin=subprocess.DEVNULL, stdout=log_file,
                       stderr=log_file, check=True)
    reference_seconds = time.monotonic() - started

    # The same search, killed again and again
    started = time.monotonic()
    with open(workdir / "killed.log", "w") as log_file:
        counts = run_with_kills(search_command(args, data_dir, killed), killed, args, log_file)
    killed_seconds = time.monotonic() - started

    # Checks
    leftover = wait_for_no_processes(killed, timeout=0) + wait_for_no_processes(reference, timeout=0)
    same_leaderboard = read_leaderboard(killed) == read_leaderboard(reference)
    checkpoint_count, load_errors = checkpoints_loaded(killed)
    redone = epochs_trained(killed) - epochs_trained(reference)
    figures = {
        "kills survived": counts["kills"],
        "of the driver": counts["driver kills"],
        "of a train.py": counts["trial kills"],
        "driver starts": counts["driver starts"],
        "epochs in the reference": epochs_trained(reference),
        "epochs redone": redone,
        "checkpoints checked": checkpoint_count,
        "checkpoints that fail to load": len(load_errors),
        "leftover processes": leftover,
        "same leaderboard": same_leaderboard,
        "reference seconds": round(reference_seconds),
        "killed run seconds": round(killed_seconds),
    }
    for name, value in figures.items():
        print(f"{name:>30}: {value}")
    for error in load_errors:
        print(f"error: {error}", file=sys.stderr)

    passed = (same_leaderboard and not load_errors and leftover == 0 and redone <= counts["kills"]
              and counts["kills"] == args.kills)
    if counts["kills"] < args.kills:
        print(f"error: the search finished after {counts['kills']} of {args.kills} kills; "
              f"use a larger --max-epochs or a shorter --interval", file=sys.stderr)
    print("soak passed" if passed else "soak FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
