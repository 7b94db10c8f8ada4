"""Compare two models without luck: tune each with Hyperband, retrain each winner k times, test them.

    python compare.py --model-a vgg11 --width-a 0.25 --model-b resnet18 --width-b 0.25 \\
        --max-epochs 9 --eta 3 --workers 2 --repeats 5 --data-dir ~/data
    python compare.py ... --resample-split     # each retraining also draws its own train/validation split
    python compare.py ... --search-repeats 3   # also repeat each search with 3 seeds, the costly estimate

Both models get one Hyperband search each with the same settings (hyperband.py subprocesses, with
--seed, --seed + 1, ... when searches are repeated). The winner of each search, read from its
leaderboard.csv, is trained from scratch --repeats times with train.py --test. Each run has its own
seed of initialisation, data order and augmentation, and is evaluated once on the test set, which
takes part in no choice. The report gives each model's test accuracy with a bootstrap interval and
P(A > B), the probability that a run of A beats a run of B.

Every run is an ordinary search or train.py run whose results stay on disk, so the same command,
killed at any moment, resumes, and once finished it writes the report at once without training.
The report, a plot and the logs go to SCRATCH/comparisons/<name>/.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import checkpoint
import cli
import compare_report
import hyperband
from launcher import make_slots, stop_process_groups, visible_gpus
from search import train_arguments

log = logging.getLogger("compare")

HYPERBAND_SCRIPT = Path(__file__).resolve().parent / "hyperband.py"
# Seconds a stopped search or retraining gets after SIGTERM; a search uses 10 of them to stop its trials.
STOP_GRACE_SECONDS = 30.0


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    defaults = checkpoint.Config()
    parser = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare two models: a Hyperband search each, then their winners retrained several times "
                    "and evaluated on the test set.",
        formatter_class=cli.HelpFormatter,
    )
    for side in ("a", "b"):
        group = parser.add_argument_group(f"model {side.upper()}")
        group.add_argument(f"--model-{side}", required=True, metavar="NAME", help="model name, as in train.py")
        group.add_argument(f"--width-{side}", type=float, default=defaults.width, metavar="FACTOR",
                           help="multiplier of every layer's channel count")
        group.add_argument(f"--space-{side}", type=Path, default=None, metavar="FILE",
                           help="TOML search space of this model's search (default: hyperband.py's)")
        group.add_argument(f"--label-{side}", default=None, metavar="TEXT",
                           help="name of this model in the report (default: the model name, with the width "
                                "when both models have the same name)")

    search = parser.add_argument_group("search, the same for both models")
    search.add_argument("--max-epochs", type=int, default=81, metavar="R",
                        help="epochs of a configuration that survives every round (Hyperband's R)")
    search.add_argument("--eta", type=int, default=2, metavar="ETA",
                        help="reduction factor: each round keeps the best 1/ETA of its configurations")
    search.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the first search (later searches use N+1, N+2, ...) and of the seeds of "
                             "the retrained runs and the bootstrap")
    search.add_argument("--search-repeats", type=int, default=1, metavar="M",
                        help="searches per model, each with its own seed; with M >= 2 the report also shows the "
                             "estimate from M searches, one retrained winner each")
    search.add_argument("--dataset", default=defaults.dataset, choices=("cifar10", "cifar100"),
                        help="dataset to train on")
    search.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="folder holding the dataset (default: the scratch folder's data/)")
    search.add_argument("--val-fraction", type=float, default=defaults.val_fraction, metavar="FRACTION",
                        help="fraction of the training images held out for validation")
    search.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                        help="folder for checkpoints, searches and comparisons (default: $SCRATCH, else ./scratch)")

    final = parser.add_argument_group("final evaluation")
    final.add_argument("--repeats", type=int, default=5, metavar="K",
                       help="times each winner is trained from scratch and evaluated on the test set")
    final.add_argument("--resample-split", action="store_true",
                       help="give each retrained run its own train/validation split as well as its own seed")

    slots = parser.add_argument_group("parallel runs")
    slots.add_argument("--gpus", type=int, default=None, metavar="N",
                       help="GPUs to use (default: every visible one; 0 runs on the CPU)")
    slots.add_argument("--per-gpu", type=int, default=1, metavar="K", help="runs sharing each GPU")
    slots.add_argument("--workers", type=int, default=1, metavar="N",
                       help="runs at once without a GPU; the CPU cores are split between them as --threads")
    slots.add_argument("--quiet", action="store_true", help="print only errors and the report")
    return parser


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One side of the comparison: the model, its search space and its name in the report."""

    side: str  # "a" or "b"
    label: str
    model: str
    width: float
    space: Path | None
    space_text: str  # "" for the default space


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[ModelSpec]:
    """Reject invalid values with exit code 2, before anything is written; return the two models."""
    cli.reject_empty_values(parser, args)
    rules = [
        (args.max_epochs >= 1, "--max-epochs", args.max_epochs, "an integer >= 1"),
        (args.eta >= 2, "--eta", args.eta, "an integer >= 2"),
        (0 <= args.seed < 2**31, "--seed", args.seed, "an integer in [0, 2**31)"),
        (args.search_repeats >= 1, "--search-repeats", args.search_repeats, "an integer >= 1"),
        # A standard deviation and a bootstrap interval need two runs at least.
        (args.repeats >= 2, "--repeats", args.repeats, "an integer >= 2, since the spread of one run is unknown"),
        (args.workers >= 1, "--workers", args.workers, "an integer >= 1"),
        (args.per_gpu >= 1, "--per-gpu", args.per_gpu, "an integer >= 1"),
        (args.gpus is None or args.gpus >= 0, "--gpus", args.gpus, "an integer >= 0"),
    ]
    for valid, flag, value, rule in rules:
        if not valid:
            parser.error(f"invalid {flag} {value}: must be {rule}")
    rule = checkpoint.check_value("val_fraction", args.val_fraction)
    if rule is not None:
        parser.error(f"invalid --val-fraction {args.val_fraction}: must be {rule}")
    if args.gpus is not None and args.gpus > len(visible_gpus()):
        parser.error(f"invalid --gpus {args.gpus}: only {len(visible_gpus())} GPUs are visible; "
                     f"use --gpus 0 with --workers N to run on the CPU")

    specs = []
    for side in ("a", "b"):
        model, width, space = (getattr(args, f"{name}_{side}") for name in ("model", "width", "space"))
        rule = checkpoint.check_value("width", width)
        if rule is not None:
            parser.error(f"invalid --width-{side} {width}: must be {rule}")
        if space is not None and not space.is_file():
            parser.error(f"invalid --space-{side} {space}: file not found")
        space_text = space.read_text() if space is not None else ""
        label = getattr(args, f"label_{side}") or model
        specs.append(ModelSpec(side, label, model, checkpoint.round_significant(width), space, space_text))
    a, b = specs
    if (a.model, a.width, a.space_text) == (b.model, b.width, b.space_text):
        parser.error(f"models A and B are the same ({a.model}, width {a.width}, same search space): "
                     f"change --model-b, --width-b or --space-b")
    if args.label_a is None and args.label_b is None and a.label == b.label:
        # Same model name: tell the two apart by width, else by search-space file.
        if a.width != b.width:
            a, b = (dataclasses.replace(spec, label=f"{spec.model} w{spec.width:g}") for spec in (a, b))
        else:
            a, b = (dataclasses.replace(spec, label=f"{spec.model} ({spec.space.name if spec.space else 'default'})")
                    for spec in (a, b))
    if a.label == b.label:
        parser.error(f"models A and B have the same label {a.label!r}: give --label-a and --label-b different values")
    return [a, b]


# ---------------------------------------------------------------- plan: searches and retrained runs


@dataclasses.dataclass(frozen=True)
class SearchRun:
    spec: ModelSpec
    index: int  # 0 for the first search of this model
    seed: int
    argv: list[str]  # sys.executable, hyperband.py and its flags
    folder: Path  # the search's folder, where hyperband.py writes leaderboard.csv

    @property
    def name(self) -> str:
        return f"{self.spec.side}{self.index}"


@dataclasses.dataclass(frozen=True)
class RepeatRun:
    """One retraining of a search's winner from scratch, evaluated on the test set."""

    spec: ModelSpec
    search: int  # index of the search whose winner this retrains
    index: int  # repeat index within that search's winner
    config: checkpoint.Config
    epochs: int
    argv: list[str]  # without the slot's --device and --threads

    @property
    def name(self) -> str:
        return f"{self.spec.side}{self.search}-{self.index}"


def search_argv(args: argparse.Namespace, spec: ModelSpec, seed: int) -> list[str]:
    """Build the hyperband.py argument list of `spec`'s search with `seed`, never a shell string."""
    argv = [sys.executable, str(HYPERBAND_SCRIPT), "--model", spec.model,
            "--width", checkpoint.format_number(spec.width), "--dataset", args.dataset,
            "--val-fraction", checkpoint.format_number(args.val_fraction),
            "--max-epochs", str(args.max_epochs), "--eta", str(args.eta), "--seed", str(seed),
            "--workers", str(args.workers), "--per-gpu", str(args.per_gpu), "--quiet"]
    if args.gpus is not None:
        argv += ["--gpus", str(args.gpus)]
    if spec.space is not None:
        argv += ["--space", str(spec.space)]
    if args.scratch is not None:
        argv += ["--scratch", str(args.scratch)]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    return argv


def plan_searches(args: argparse.Namespace, specs: list[ModelSpec], scratch: Path) -> list[SearchRun]:
    """Return every search of the comparison, model A's first, each with the folder hyperband.py will use."""
    searches = []
    parser = hyperband.build_parser()
    for spec in specs:
        for index in range(args.search_repeats):
            argv = search_argv(args, spec, args.seed + index)
            # hyperband.py's own parser and folder function, so the folder is the one it writes to.
            folder = hyperband.search_folder(scratch, parser.parse_args(argv[2:]), spec.space_text)
            searches.append(SearchRun(spec, index, args.seed + index, argv, folder))
    return searches


def repeat_seeds(comparison_seed: int, search: SearchRun, count: int, resample_split: bool) -> list[tuple[int, int]]:
    """Return (seed, split seed) of each of `count` retrainings of `search`'s winner.

    The seeds come from numpy's SeedSequence of (comparison seed, search index, repeat index), so
    they are fixed by the command, and repeat r of model A and of model B share them. The search
    trained its winner with seed = the search's seed on split 0, so that pair is skipped: a
    retraining identical to the search's own run would be reused from its checkpoint, and that run
    was chosen for scoring well, so it is no fair sample. Split seed 0 (the standard split) is
    skipped with --resample-split, and no two retrainings share a seed.
    """
    pairs = []
    used = set()
    for repeat in range(count):
        words = np.random.SeedSequence([comparison_seed, search.index, repeat]).generate_state(2)
        seed = int(words[0])
        split_seed = max(1, int(words[1])) if resample_split else 0
        while seed in used or (seed == search.seed and split_seed == 0):
            seed += 1
        used.add(seed)
        pairs.append((seed, split_seed))
    return pairs


def read_winner(search: SearchRun) -> tuple[checkpoint.Config, int, float]:
    """Return the configuration, epochs and validation accuracy of rank 1 in `search`'s leaderboard."""
    path = search.folder / "leaderboard.csv"
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    ranked = [row for row in rows if row["rank"] == "1"]
    if not ranked or ranked[0]["status"] != "ok":
        raise ComparisonError(f"the search {search.folder} has no configuration that trained without failing "
                              f"(see {path}); try other search settings")
    row = ranked[0]
    values = {}
    for field in dataclasses.fields(checkpoint.Config):
        text = row[field.name]
        if field.type == "int":
            values[field.name] = int(text)
        elif field.type == "float":
            values[field.name] = float(text)
        else:
            values[field.name] = text
    return checkpoint.Config(**values), int(row["epochs"]), float(row["val_acc"])


def plan_repeats(args: argparse.Namespace, searches: list[SearchRun], scratch: Path) -> list[RepeatRun]:
    """Return every retraining: --repeats of each model's first search's winner, one of each later search's."""
    repeats = []
    for search in searches:
        winner, epochs, _ = read_winner(search)
        count = args.repeats if search.index == 0 else 1
        for index, (seed, split_seed) in enumerate(repeat_seeds(args.seed, search, count, args.resample_split)):
            config = dataclasses.replace(winner, seed=seed, split_seed=split_seed)
            argv = train_arguments(config, epochs, scratch, args.data_dir) + ["--test", "--quiet"]
            repeats.append(RepeatRun(search.spec, search.index, index, config, epochs, argv))
    return repeats


def comparison_folder(scratch: Path, args: argparse.Namespace, specs: list[ModelSpec]) -> Path:
    """Return the comparison's folder: readable settings plus a hash of everything that changes its runs."""
    a, b = specs
    settings = [[spec.model, spec.width, spec.space_text] for spec in specs]
    settings += [args.dataset, args.val_fraction, args.max_epochs, args.eta, args.seed, args.search_repeats,
                 args.repeats, args.resample_split]
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:8]
    name = f"{args.dataset}_{a.model}_vs_{b.model}_R{args.max_epochs}_eta{args.eta}_seed{args.seed}_{digest}"
    return scratch / "comparisons" / name


def display_command(argv: list[str]) -> str:
    """Return `argv` as the shell command a person would type: python, the script's name, its flags."""
    return shlex.join(["python", Path(argv[1]).name] + argv[2:])


# ---------------------------------------------------------------- running


class ComparisonError(Exception):
    """A failure that stops the comparison, such as a search or a retraining that failed."""


def stop_with_parent() -> None:
    """Make the kernel send SIGTERM to this child process when compare.py dies, even by SIGKILL.

    Runs in the child between fork and exec. Without it, a killed compare.py would leave its
    searches and trainings running, and the rerun's hyperband.py would find its search locked.
    NOTE: prctl exists on Linux only. Elsewhere the children outlive a killed compare.py, so a rerun
    waits for their trainings' locks, or exits naming the hyperband.py that still runs a search.
    """
    parent = os.getppid()
    pr_set_pdeathsig = 1  # from <sys/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def start(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` in its own process group, with stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as output:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                                preexec_fn=stop_with_parent if sys.platform.startswith("linux") else None)


def last_lines(path: Path, count: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-count:])


def run_search(search: SearchRun, logs: Path, quiet: bool) -> None:
    """Run or resume one search with hyperband.py, unless its leaderboard shows that it finished."""
    if (search.folder / "leaderboard.csv").is_file():
        log.info("search %s of %s is finished: %s", search.index + 1, search.spec.label, search.folder)
        return
    log_path = logs / f"search_{search.name}.log"
    if not quiet:
        print(f"searching {search.spec.label} with seed {search.seed} (log: {log_path})", file=sys.stderr, flush=True)
    started = time.monotonic()
    process = start(search.argv, log_path)
    try:
        code = process.wait()
    except BaseException:
        stop_process_groups([process], STOP_GRACE_SECONDS)
        raise
    if code == checkpoint.EXIT_USAGE:
        # hyperband.py exits 2 for settings that it or train.py rejects, such as an unknown model.
        raise UsageError(f"the search of {search.spec.label} rejected its settings: {last_lines(log_path, 1)}")
    if code != 0:
        raise ComparisonError(f"the search of {search.spec.label} failed with exit code {code}:\n"
                              f"{last_lines(log_path)}\nSee {log_path}; fix the cause and rerun the same command.")
    if not quiet:
        print(f"search of {search.spec.label} finished in {time.monotonic() - started:.0f} s", file=sys.stderr,
              flush=True)


class UsageError(Exception):
    """Settings that hyperband.py or train.py rejected with exit code 2."""


def run_repeats(repeats: list[RepeatRun], args: argparse.Namespace, scratch: Path, logs: Path) -> None:
    """Run every retraining whose test result is not on disk yet, as many at once as there are slots."""
    pending = [repeat for repeat in repeats if stored_result(repeat, scratch) is None]
    if not pending:
        return
    gpu_ids = visible_gpus() if args.gpus is None else visible_gpus()[:args.gpus]
    free = make_slots(gpu_ids, args.per_gpu, args.workers, os.cpu_count() or 1)
    running: dict[subprocess.Popen, tuple[RepeatRun, object, Path]] = {}
    failures = []
    if not args.quiet:
        print(f"retraining {len(pending)} of {len(repeats)} runs, {len(free)} at once", file=sys.stderr, flush=True)
    try:
        while pending or running:
            while pending and free:
                repeat, slot = pending.pop(0), free.pop(0)
                log_path = logs / f"repeat_{repeat.name}.log"
                process = start(repeat.argv + list(slot.flags), log_path, slot.env)
                running[process] = (repeat, slot, log_path)
            time.sleep(0.2)
            for process in [process for process in running if process.poll() is not None]:
                repeat, slot, log_path = running.pop(process)
                free.append(slot)
                if process.returncode != 0:
                    failures.append(f"{repeat.spec.label}, search {repeat.search + 1}, run {repeat.index + 1} "
                                    f"(exit code {process.returncode}, log {log_path}):\n{last_lines(log_path, 3)}")
                elif not args.quiet:
                    result = stored_result(repeat, scratch)
                    score = "diverged" if result["test_acc"] is None else f"test acc {result['test_acc']:.4f}"
                    print(f"{repeat.spec.label}, search {repeat.search + 1}, run {repeat.index + 1} (seed "
                          f"{repeat.config.seed}, split {repeat.config.split_seed}): {score}", file=sys.stderr,
                          flush=True)
    except BaseException:
        stop_process_groups(list(running), STOP_GRACE_SECONDS)
        raise
    if failures:
        raise ComparisonError("these retrainings failed; rerun the same command to retry them:\n"
                              + "\n".join(failures))


def stored_result(repeat: RepeatRun, scratch: Path) -> dict | None:
    """Return the test result that train.py --test stored for `repeat`, or None when there is none yet."""
    folder = checkpoint.config_folder(scratch, repeat.config)
    try:
        return checkpoint.read_test_result(folder, repeat.config, repeat.epochs)
    except checkpoint.UnusableCheckpoint as error:
        log.warning("%s; train.py will compute it again", error)
        return None


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    specs = check_arguments(args, parser)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    cli.raise_stopped_on_signals()
    try:
        return run(args, specs)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return checkpoint.EXIT_USAGE
    except ComparisonError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except cli.Stopped as stop_signal:
        print(f"stopped by {stop_signal}; running searches and trainings were stopped. Rerun the same command "
              f"to resume.", file=sys.stderr)
        return 128 + stop_signal.signum


def run(args: argparse.Namespace, specs: list[ModelSpec]) -> int:
    """Run the searches and the retrainings, then write and print the report; return the exit code."""
    scratch, source = checkpoint.resolve_scratch(args.scratch)
    folder = comparison_folder(scratch, args, specs)
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log.info("scratch folder: %s (%s); comparison folder: %s", scratch.resolve(), source, folder)

    # One search per model and seed, one after another, each using every slot
    searches = plan_searches(args, specs, scratch)
    for search in searches:
        run_search(search, logs, args.quiet)

    # The winners, retrained from scratch and evaluated on the test set
    repeats = plan_repeats(args, searches, scratch)
    run_repeats(repeats, args, scratch, logs)

    # Report
    runs = [compare_report.RunResult(repeat.spec.label, repeat.search, repeat.index, repeat.config, repeat.epochs,
                                     stored_result(repeat, scratch), display_command(repeat.argv))
            for repeat in repeats]
    winners = [compare_report.Winner(search.spec.label, search.index, search.seed, *read_winner(search),
                                     search.folder, display_command(search.argv))
               for search in searches]
    settings = compare_report.Settings(
        labels=(specs[0].label, specs[1].label), dataset=args.dataset, max_epochs=args.max_epochs, eta=args.eta,
        seed=args.seed, val_fraction=args.val_fraction, repeats=args.repeats, search_repeats=args.search_repeats,
        resample_split=args.resample_split)
    report_path, text = compare_report.write_report(folder, settings, winners, runs)
    print(text, end="")
    print(f"Report written to {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
