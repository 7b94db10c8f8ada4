"""Optional TensorBoard scalars of train.py, one run folder per configuration.

When the tensorboard package is installed (pip install tensorboard), train.py writes each epoch's
training and validation loss and accuracy and its learning rate to
SCRATCH/tensorboard/<dataset>/<model>/<config stem>/, with the training examples seen as the step,
so that `tensorboard --logdir SCRATCH/tensorboard` shows every run. Without the package nothing is
written and nothing fails. It is imported only when a run trains, so it costs nothing otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import checkpoint

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install tensorboard"

# Tag of each scalar, and the key of the history record that contains it.
TAGS = {
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "accuracy/train": "train_acc",
    "accuracy/validation": "val_acc",
    "learning_rate": "lr",
}


def run_folder(scratch: Path, config: checkpoint.Config) -> Path:
    return Path(scratch) / "tensorboard" / config.dataset / config.model / checkpoint.config_stem(config)


def open_writer(scratch: Path, config: checkpoint.Config, examples_seen: int):
    """Open `config`'s TensorBoard run for new epochs; return None when tensorboard is not installed.

    `examples_seen` is the step of the checkpoint that training resumes from. Points that an earlier
    process wrote after that step are hidden (TensorBoard's purge_step). They exist when training
    resumes from an older checkpoint than the newest one written, say because the newest was damaged,
    so an epoch trained twice shows once.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard is not installed, so no TensorBoard scalars are written (%s)", INSTALL_HINT)
        return None
    except Exception as error:  # a broken install, such as a protobuf version clash, must not stop training
        log.warning("TensorBoard scalars are off: importing tensorboard failed (%s: %s)", type(error).__name__, error)
        return None
    folder = run_folder(scratch, config)
    log.info("TensorBoard scalars: %s", folder)
    return SummaryWriter(log_dir=str(folder), purge_step=examples_seen + 1)


def write_epoch(writer, record: dict) -> None:
    """Write one history record's scalars at its step, the training examples seen, and flush them."""
    for tag, key in TAGS.items():
        writer.add_scalar(tag, record[key], global_step=record["examples_seen"], walltime=record["timestamp"])
    writer.flush()
