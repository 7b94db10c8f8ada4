"""List every configuration trained under a scratch folder, best validation accuracy first.

    python runs.py                                   # every run under $SCRATCH/checkpoints
    python runs.py --model vgg11 --dataset cifar10   # one model's runs
    python runs.py --format csv > runs.csv           # or --format json

Everything shown comes from the checkpoint file names, which carry the configuration, the completed
epochs and the validation accuracy. No checkpoint is loaded and torch is not imported, so listing
hundreds of runs takes well under a second. Files whose names do not parse as checkpoint names are
ignored. Per configuration, train.py keeps the latest and the best checkpoint, so both accuracies
are known from the names.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import re
import sys
from pathlib import Path

import checkpoint
import cli

FORMATS = ("table", "csv", "json")
CONFIG_FIELDS = [field.name for field in dataclasses.fields(checkpoint.Config)]
# Keys of each run in the csv and json output, in order.
COLUMNS = CONFIG_FIELDS + ["epochs", "status", "best_val_acc", "best_epoch", "latest_val_acc", "best_checkpoint",
                           "latest_checkpoint"]
# Dataset and model names, as checkpoint names spell them.
NAME_PATTERN = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class Run:
    """One configuration, as its checkpoint names describe it."""

    config: checkpoint.Config
    epochs: int  # completed epochs of the latest checkpoint
    status: str  # "ok", or "diverged" when the latest checkpoint diverged
    latest_val_acc: float | None  # None when the latest checkpoint diverged
    best_val_acc: float | None  # highest accuracy among the checkpoints, None if none has one
    best_epoch: int | None
    latest_checkpoint: Path
    best_checkpoint: Path | None


def find_runs(scratch: Path, dataset: str | None = None, model: str | None = None) -> list[Run]:
    """Collect the runs under SCRATCH/checkpoints/<dataset>/<model>/, best validation accuracy first.

    Ties go to more epochs, then to the configuration's name. Runs without any accuracy, such as one
    that diverged in its first epoch, come last.
    """
    found: dict[tuple[Path, checkpoint.Config], list[tuple[checkpoint.ParsedName, Path]]] = {}
    # The filters apply to the parsed names, not the folder names, so a file copied into another
    # model's folder is still listed under its own model.
    for folder in checkpoint_folders(Path(scratch) / "checkpoints"):
        for entry in os.scandir(folder):
            parsed = checkpoint.parse_name(entry.name)
            if parsed is None or not entry.is_file():
                continue
            if dataset is not None and parsed.config.dataset != dataset:
                continue
            if model is not None and parsed.config.model != model:
                continue
            found.setdefault((folder, parsed.config), []).append((parsed, Path(entry.path)))
    runs = [summarise(config, files) for (_, config), files in found.items()]
    runs.sort(key=lambda run: (run.best_val_acc is None, -(run.best_val_acc or 0.0), -run.epochs,
                               checkpoint.config_stem(run.config)))
    return runs


def checkpoint_folders(root: Path) -> list[Path]:
    """List the <dataset>/<model> folders under `root`."""
    return sorted(path for path in root.glob("*/*") if path.is_dir())


def summarise(config: checkpoint.Config, files: list[tuple[checkpoint.ParsedName, Path]]) -> Run:
    latest, latest_path = max(files, key=lambda item: item[0].epoch)
    scored = [item for item in files if item[0].val_acc is not None]
    # The earlier epoch wins a tie, as when train.py chooses which checkpoint to keep as the best.
    best, best_path = max(scored, key=lambda item: (item[0].val_acc, -item[0].epoch)) if scored else (None, None)
    return Run(config=config, epochs=latest.epoch, status="diverged" if latest.diverged else "ok",
               latest_val_acc=latest.val_acc, best_val_acc=best.val_acc if best else None,
               best_epoch=best.epoch if best else None, latest_checkpoint=latest_path, best_checkpoint=best_path)


# ---------------------------------------------------------------- output formats


def run_record(run: Run) -> dict:
    """Return `run` as a flat dict with the keys of COLUMNS."""
    return {**run.config.to_dict(), "epochs": run.epochs, "status": run.status,
            "best_val_acc": run.best_val_acc, "best_epoch": run.best_epoch, "latest_val_acc": run.latest_val_acc,
            "best_checkpoint": str(run.best_checkpoint) if run.best_checkpoint else None,
            "latest_checkpoint": str(run.latest_checkpoint)}


def format_json(runs: list[Run]) -> str:
    return json.dumps([run_record(run) for run in runs], indent=2) + "\n"


def format_csv(runs: list[Run]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        writer.writerow({key: "" if value is None else value for key, value in run_record(run).items()})
    return buffer.getvalue()


def format_table(runs: list[Run]) -> str:
    """Render the runs as a fixed-width table, with train.py's flag names as headers."""
    def accuracy(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    header = ["dataset", "model"] + [name.replace("_", "-") for name in CONFIG_FIELDS[2:]]
    header += ["epochs", "best acc", "best epoch", "latest acc", "status"]
    rows = []
    for run in runs:
        values = [getattr(run.config, name) for name in CONFIG_FIELDS]
        cells = values[:2] + [checkpoint.format_number(value) for value in values[2:]]
        cells += [run.epochs, accuracy(run.best_val_acc), "-" if run.best_epoch is None else run.best_epoch,
                  accuracy(run.latest_val_acc), run.status]
        rows.append([str(cell) for cell in cells])
    widths = [max(len(row[c]) for row in [header] + rows) for c in range(len(header))]
    # Text columns align left, numbers right.
    left = {0, 1, len(header) - 1}
    lines = ["  ".join(cell.ljust(w) if c in left else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runs.py",
        description="List the configurations trained under a scratch folder, from their checkpoint names, "
                    "best validation accuracy first.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                        help="folder that contains checkpoints/ (default: $SCRATCH, else ./scratch)")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="list only this dataset's runs, such as cifar10")
    parser.add_argument("--model", default=None, metavar="NAME", help="list only this model's runs, such as vgg11")
    parser.add_argument("--format", default="table", choices=FORMATS, help="output format")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.reject_empty_values(parser, args)
    for flag in ("dataset", "model"):
        value = getattr(args, flag)
        if value is not None and not NAME_PATTERN.fullmatch(value):
            parser.error(f"invalid --{flag} {value!r}: expected a lowercase name of letters and digits, "
                         f"as in the checkpoint names")
    if args.scratch is not None and args.scratch.exists() and not args.scratch.is_dir():
        parser.error(f"invalid --scratch {args.scratch}: exists and is not a folder")

    scratch, source = checkpoint.resolve_scratch(args.scratch)
    root = scratch / "checkpoints"
    if not root.is_dir():
        print(f"error: no checkpoints folder in {scratch} ({source}). Pass --scratch DIR, the folder that "
              f"train.py and hyperband.py wrote to.", file=sys.stderr)
        return 1
    runs = find_runs(scratch, args.dataset, args.model)

    formatters = {"table": format_table, "csv": format_csv, "json": format_json}
    if runs or args.format != "table":
        sys.stdout.write(formatters[args.format](runs))
    filters = " ".join(f"--{flag} {getattr(args, flag)}" for flag in ("dataset", "model") if getattr(args, flag))
    noun = "configuration" if len(runs) == 1 else "configurations"
    print(f"{len(runs)} {noun} in {root}" + (f" matching {filters}" if filters else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
