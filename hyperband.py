"""Search hyperparameters with Hyperband, running train.py for every trial.

    python hyperband.py --model vgg11 --width 0.25 --max-epochs 9 --eta 3 --workers 2 --data-dir ~/data
    python hyperband.py --max-epochs 81 --eta 3 --dry-run          # print the bracket table only
    python hyperband.py --model resnet18 --max-epochs 27 --space space.toml --gpus 4 --per-gpu 2
    python hyperband.py --model vgg11 --width 0.25 --max-epochs 9 --eta 3 --report   # report on that search
    sbatch examples/hyperband.sbatch     # on a Slurm cluster: --launcher slurm, trials on every node and GPU

Killed at any moment, the same command run again carries on: it draws the same configurations,
reads finished results from the search's journal and the checkpoint names, and resumes the rest.
The leaderboard is printed at the end and written to SCRATCH/searches/<search>/leaderboard.csv,
beside report.md and plots/, which are also redrawn after every round.

The driver never imports torch, the models or the data: each trial is a train.py subprocess.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

import checkpoint
import cli
import plan
import report
import slurm
import space
from launcher import LocalLauncher, make_slots, visible_gpus
from search import Search, SearchError, Trial, train_arguments

log = logging.getLogger("hyperband")


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    defaults = checkpoint.Config()
    parser = argparse.ArgumentParser(
        prog="hyperband.py",
        description="Search hyperparameters of one model with Hyperband; every trial is a train.py run.",
        formatter_class=cli.HelpFormatter,
    )
    search = parser.add_argument_group("search")
    search.add_argument("--max-epochs", type=int, default=81, metavar="R",
                        help="epochs of a configuration that survives every round (Hyperband's R)")
    search.add_argument("--eta", type=int, default=2, metavar="ETA",
                        help="reduction factor: each round keeps the best 1/ETA of its configurations")
    search.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the configurations drawn, and the training seed of each trial")
    search.add_argument("--space", type=Path, default=None, metavar="FILE",
                        help="TOML search space (default: lr log-uniform in [0.01, 0.4], lr-decay uniform "
                             "in [0, 0.5], batch-size in {64, 128, 256}, lr-step R/3)")
    search.add_argument("--dry-run", action="store_true", help="print the bracket table and exit")
    search.add_argument("--report", action="store_true",
                        help="write the report and plots of the search with these settings from its files, print "
                             "the report and exit, training nothing")

    model = parser.add_argument_group("model and data, passed to every trial")
    model.add_argument("--model", default=defaults.model, metavar="NAME", help="model name, as in train.py")
    model.add_argument("--width", type=float, default=defaults.width, metavar="FACTOR",
                       help="multiplier of every layer's channel count")
    model.add_argument("--dataset", default=defaults.dataset, choices=("cifar10", "cifar100"),
                       help="dataset to train on")
    model.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="folder holding the dataset (default: the scratch folder's data/)")
    model.add_argument("--val-fraction", type=float, default=defaults.val_fraction, metavar="FRACTION",
                       help="fraction of the training images held out for validation")
    model.add_argument("--precision", default=defaults.precision, choices=checkpoint.PRECISIONS,
                       help="fp32, or bf16 autocast (faster on recent GPUs; not comparable with fp32 results)")
    model.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                       help="folder for checkpoints and the search's files (default: $SCRATCH, else ./scratch); "
                            "with --launcher slurm it must be on a file system that every node shares")

    slots = parser.add_argument_group("parallel trials")
    slots.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="where trials run: subprocesses of this machine, or job steps (srun) on every node "
                            "of the current Slurm allocation")
    slots.add_argument("--gpus", type=int, default=None, metavar="N",
                       help="GPUs to use (default: every visible one, or every one in the Slurm allocation; "
                            "0 runs on the CPU)")
    slots.add_argument("--per-gpu", type=int, default=1, metavar="K", help="trials sharing each GPU")
    slots.add_argument("--workers", type=int, default=None, metavar="N",
                       help="trials at once without a GPU; the CPU cores are split between them (default: 1, or "
                            "with --launcher slurm one per --cpus-per-task CPUs of the allocation, or per CPU "
                            "without it)")
    slots.add_argument("--trial-timeout", type=float, default=None, metavar="SECONDS",
                       help="stop a trial after this long and rank it last (default: no limit)")
    slots.add_argument("--retries", type=int, default=2, metavar="N",
                       help="reruns of a trial that failed for a reason outside its configuration (disk full, "
                            "data missing, killed by a signal) before the search stops"),
    slots.add_argument("--quiet", action="store_true", help="no progress bar and no per-trial lines")
    return parser


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Reject invalid values with exit code 2 and a message naming the flag, before anything is written."""
    cli.reject_empty_values(parser, args)
    rules = [
        (args.max_epochs >= 1, "--max-epochs", args.max_epochs, "an integer >= 1"),
        (args.eta >= 2, "--eta", args.eta, "an integer >= 2"),
        (args.per_gpu >= 1, "--per-gpu", args.per_gpu, "an integer >= 1"),
        (args.workers is None or args.workers >= 1, "--workers", args.workers, "an integer >= 1"),
        (args.gpus is None or args.gpus >= 0, "--gpus", args.gpus, "an integer >= 0"),
        (args.retries >= 0, "--retries", args.retries, "an integer >= 0"),
        (args.trial_timeout is None or 0 < args.trial_timeout < math.inf, "--trial-timeout", args.trial_timeout,
         "a finite number of seconds > 0"),
    ]
    for valid, flag, value, rule in rules:
        if not valid:
            parser.error(f"invalid {flag} {value}: must be {rule}")
    for field in ("width", "seed", "val_fraction"):
        rule = checkpoint.check_value(field, getattr(args, field))
        if rule is not None:
            parser.error(f"invalid --{field.replace('_', '-')} {getattr(args, field)}: must be {rule}")
    if args.space is not None and not args.space.is_file():
        parser.error(f"invalid --space {args.space}: file not found")
    if args.report and args.dry_run:
        parser.error("--report and --dry-run exclude each other: --dry-run prints the plan only")


def choose_slots(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """Return the slots of the trials that run at once and the launcher that starts them.

    A problem with the flags or the Slurm allocation exits with code 2 before anything is written.
    """
    if args.launcher == "local":
        gpu_ids = choose_gpus(args, parser)
        if not gpu_ids:
            reject_per_gpu_on_cpu(args, parser)
        slots = make_slots(gpu_ids, args.per_gpu, args.workers or 1, os.cpu_count() or 1)
        return slots, LocalLauncher()
    try:
        allocation = slurm.read_allocation(os.environ)
        slurm_slots = slurm.make_slurm_slots(allocation, args.gpus, args.per_gpu, args.workers)
        launcher = slurm.SlurmLauncher.for_allocation(allocation, slurm_slots)
    except slurm.AllocationError as error:
        parser.error(str(error))
    if slurm_slots.gpus_per_trial == 0:
        reject_per_gpu_on_cpu(args, parser)
    log.info("Slurm job %s: %d nodes, CPUs per node %s, %d GPUs per node; each trial gets %d CPUs and %d GPUs",
             allocation.job_id, allocation.nodes, ",".join(map(str, allocation.cpus_per_node)),
             allocation.gpus_per_node, slurm_slots.cpus_per_trial, slurm_slots.gpus_per_trial)
    return slurm_slots.slots, launcher


def reject_per_gpu_on_cpu(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.per_gpu > 1:
        parser.error(f"invalid --per-gpu {args.per_gpu}: this search runs its trials on the CPU, where --per-gpu "
                     f"has no effect; use --workers N for N trials at once")


def choose_gpus(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    visible = visible_gpus()
    if args.gpus is None:
        return visible
    if args.gpus > len(visible):
        parser.error(f"invalid --gpus {args.gpus}: only {len(visible)} GPUs are visible; "
                     f"use --gpus 0 with --workers N to run on the CPU")
    return visible[:args.gpus]


# ---------------------------------------------------------------- the search's files


def search_folder(scratch: Path, args: argparse.Namespace, space_text: str) -> Path:
    """Return the folder of this search: readable settings plus a hash of everything that draws configurations."""
    settings = [args.dataset, args.model, args.width, args.val_fraction, args.max_epochs, args.eta, args.seed,
                space_text]
    name = f"{args.dataset}_{args.model}_R{args.max_epochs}_eta{args.eta}_seed{args.seed}"
    # Only a non-default precision joins the settings, so fp32 searches keep the folder they had
    # before the flag existed.
    if args.precision != "fp32":
        settings.append(args.precision)
        name += f"_{args.precision}"
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:8]
    return scratch / "searches" / f"{name}_{digest}"


def scratch_problem(scratch: Path) -> str | None:
    """Create the scratch folder if needed and write a file in it; return why that failed, or None."""
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=scratch, prefix=".write-test-"):
            pass
    except OSError as error:
        return (f"the scratch folder {scratch} is not writable ({error.strerror or error}); pass --scratch "
                f"(or set $SCRATCH) to a folder you can write, on a file system every node shares when trials "
                f"run on several nodes")
    return None


def warn_if_node_local(scratch: Path) -> None:
    """Warn when the scratch folder looks local to this node, where trials on other nodes cannot see it."""
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        mounts = ""
    reason = slurm.node_local_reason(scratch.resolve(), mounts)
    if reason is not None:
        log.warning("the scratch folder %s may be local to this node: %s. Trials on other nodes of the "
                    "allocation would not see its checkpoints; use a shared file system for --scratch unless "
                    "the allocation has one node", scratch.resolve(), reason)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files that a driver killed while writing the search's files left behind.

    Call this only while holding the search's lock: then no other driver writes in the folder.
    """
    for path in [*folder.glob(f".*{checkpoint.TEMP_MARKER}*"), *folder.glob(f"*/.*{checkpoint.TEMP_MARKER}*")]:
        path.unlink(missing_ok=True)
        log.info("deleted %s, left behind by an interrupted write", path)


def lock_search(folder: Path):
    """Hold an exclusive lock on the search folder, or exit naming the process that holds it."""
    path = folder / ".lock"
    file = open(path, "a+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise SearchError(f"another hyperband.py (process {holder}) is running this search in {folder}; "
                          f"wait for it to finish or stop it first") from None
    file.seek(0)
    file.truncate()
    file.write(str(os.getpid()))
    file.flush()
    return file


def write_leaderboard(path: Path, rows) -> None:
    """Write the leaderboard as CSV, atomically."""
    buffer = io.StringIO()
    fields = [field.name for field in dataclasses.fields(checkpoint.Config)]
    writer = csv.writer(buffer)
    writer.writerow(["rank", "status", "epochs", "val_acc", "val_loss"] + fields + ["checkpoint"])
    for row in rows:
        result = row.result
        writer.writerow([row.rank, result.status, result.epochs, result.val_acc, result.val_loss]
                        + [getattr(row.config, field) for field in fields] + [result.checkpoint])
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(buffer.getvalue())
    os.replace(temp, path)


def describe(config: checkpoint.Config, dimensions: list[space.Dimension]) -> str:
    """Show the searched hyperparameters of `config` as flag=value pairs."""
    fields = [d.field for d in dimensions if d.distribution != "fixed"] or ["lr"]
    return " ".join(f"{space.flag_name(f)}={checkpoint.format_number(getattr(config, f))}" for f in fields)


# ---------------------------------------------------------------- progress at the terminal


class TqdmHandler(logging.Handler):
    """Writes log records above the progress bar instead of through it."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(args, parser)
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    cli.raise_stopped_on_signals()
    try:
        return run(args, parser)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except cli.Stopped as stop:
        print(f"stopped by {stop}; running trials were stopped. Rerun the same command to resume.",
              file=sys.stderr)
        return 128 + stop.signum


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Plan, draw the configurations, run the search and print its leaderboard; return the exit code."""
    # Plan
    brackets = plan.plan_brackets(args.max_epochs, args.eta)
    try:
        dimensions = space.load_space(args.space) if args.space else space.default_space(args.max_epochs)
    except space.SpaceError as error:
        parser.error(f"invalid --space: {error}")
    space_text = args.space.read_text() if args.space else ""
    if not args.report:
        print(f"Hyperband plan for R={args.max_epochs}, eta={args.eta} (configurations x epochs per round; "
              f"'epochs' counts epochs trained when promoted configurations resume, 'no reuse' when they restart):")
        print(plan.format_plan(brackets), flush=True)
    if args.dry_run:
        return 0

    # Configurations, drawn from the seed in bracket order
    rng = random.Random(args.seed)
    base = checkpoint.Config(dataset=args.dataset, model=args.model, width=args.width, seed=args.seed,
                             val_fraction=args.val_fraction, precision=args.precision)
    configs = [space.sample_configs(dimensions, bracket.rounds[0].configs, rng, base) for bracket in brackets]

    # The search's folder, which is all that --report reads
    scratch, source = checkpoint.resolve_scratch(args.scratch)
    folder = search_folder(scratch, args, space_text)
    settings = report.SearchSettings(folder, scratch, args.data_dir, brackets, configs,
                                     describe=lambda config: describe(config, dimensions))
    if args.report:
        return show_report(settings, parser)

    # Slots and the launcher, then what train.py would reject, before anything is written
    slots, launcher = choose_slots(args, parser)
    code = check_with_train(configs[0][0], scratch, args.data_dir)
    if code != 0:
        return code

    # A scratch folder that the trials can write
    problem = scratch_problem(scratch)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.launcher == "slurm":
        warn_if_node_local(scratch)

    # The search's folder, locked
    log.info("scratch folder: %s (%s); search folder: %s", scratch.resolve(), source, folder)
    log.info("trials at once: %d (%s)", len(slots), ", ".join(slot.name for slot in slots))
    folder.mkdir(parents=True, exist_ok=True)
    lock = lock_search(folder)
    remove_stale_temporaries(folder)

    # The search, with a progress bar over all its epochs
    total_epochs = sum(bracket.epochs_with_reuse for bracket in brackets)
    started = time.monotonic()
    recorder = report.RoundRecorder(settings)
    with tqdm(total=total_epochs, unit="epoch", desc="search", disable=True if args.quiet else None,
              file=sys.stderr) as bar:  # None: no bar when stderr is a file, as in a batch job's log
        def on_result(trial: Trial, result, reused: bool) -> None:
            bar.update(trial.epochs - trial.previous_epochs)
            recorder.note_result(reused)
            score = f"val acc {result.val_acc:.4f}" if result.status == "ok" else result.status
            log.info("%s after %d epochs: %s (%s)", describe(trial.config, dimensions), trial.epochs, score,
                     "from an earlier run" if reused else f"{result.seconds:.0f} s")

        search = Search(brackets, configs, args.eta, scratch, args.data_dir, folder, slots, launcher=launcher,
                        trial_timeout=args.trial_timeout, on_result=on_result, retries=args.retries,
                        on_round=recorder)
        rows = search.run()

    # Leaderboard
    leaderboard_path = folder / "leaderboard.csv"
    write_leaderboard(leaderboard_path, rows)
    lock.close()
    print(f"\nLeaderboard ({len(rows)} configurations, {time.monotonic() - started:.0f} s):")
    print(report.format_leaderboard(rows, settings.describe))
    best = rows[0]
    # A search in which no trial produced a score has no best configuration to show.
    exit_code = 0 if best.result.score is not None else 1
    if exit_code == 0:
        print(f"\nBest checkpoint: {best.result.checkpoint}")
        print(f"Reproduce it:    {report.reproduce_command(best.config, best.result.epochs, scratch, args.data_dir)}")
    else:
        print(f"\nNo configuration finished with a validation score: every trial failed, diverged or timed out. "
              f"Their logs are in {folder / 'logs'}. Fix the cause (a --trial-timeout that is too short, for "
              f"example) and rerun; trials that failed are tried again.", file=sys.stderr)
    print(f"Leaderboard CSV: {leaderboard_path}")
    try:
        report_path, _, plot_paths = report.write_report(settings)
    except OSError as error:
        log.warning("could not write the report in %s: %s", folder, error.strerror or error)
        return exit_code
    print(f"Report:          {report_path}")
    for path in plot_paths:
        print(f"Plot:            {path}")
    return exit_code


def show_report(settings: report.SearchSettings, parser: argparse.ArgumentParser) -> int:
    """Write and print the report of the search in `settings`, from its files alone."""
    if not settings.folder.is_dir():
        searches = sorted(path.name for path in settings.folder.parent.glob("*") if path.is_dir())
        parser.error(f"--report: no search with these settings in {settings.folder.parent} (expected the folder "
                     f"{settings.folder.name}). Give the flags and --space of the search to report on; "
                     f"searches there: {', '.join(searches) or 'none'}")
    try:
        path, text, _ = report.write_report(settings)
    except OSError as error:
        print(f"error: could not write the report in {settings.folder}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(text, end="")
    print(f"Report written to {path}")
    return 0


def check_with_train(config: checkpoint.Config, scratch: Path, data_dir: Path | None) -> int:
    """Run `train.py --check` on one configuration; return 0, or print why not and return the exit code."""
    check = subprocess.run(train_arguments(config, 1, scratch, data_dir) + ["--check", "--quiet"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check.returncode < 0:
        print(f"error: the check of the settings (train.py --check) was killed by signal {-check.returncode}; "
              f"rerun the same command", file=sys.stderr)
        return 1
    if check.returncode == 0:
        return 0
    message = check.stderr.strip().splitlines()[-1] if check.stderr.strip() else f"exit code {check.returncode}"
    message = message.removeprefix("train.py: ").removeprefix("error: ")
    if check.returncode == checkpoint.EXIT_DATA_MISSING:
        print(f"error: {message}", file=sys.stderr)
        return checkpoint.EXIT_DATA_MISSING
    print(f"error: train.py rejected the settings of this search: {message}", file=sys.stderr)
    return checkpoint.EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
