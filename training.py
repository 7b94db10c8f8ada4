"""One epoch of training and one pass of evaluation, with metrics accumulated on the device.

Neither function reads a value back to the host inside its loop. Loss sums and correct counts
stay on the device and are read once at the end, so the host does not wait for the GPU between steps.
Images go in as channels_last, the faster layout for convolutions on CUDA and, measured here with
vgg11 at width 0.25 on 2 CPU cores, about 25% faster on the CPU too.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from tqdm import tqdm

import checkpoint
import data
import models


def autocast(device: torch.device, precision: str):
    """Return the autocast context of `precision`: bfloat16 autocast for "bf16", a no-op for "fp32".

    bfloat16 keeps float32's exponent range, so unlike float16 it needs no gradient scaler.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build_model_and_optimizer(config: checkpoint.Config, classes: int,
                              device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Build `config`'s model in channels_last on `device`, its initial weights drawn from the seed, and its SGD."""
    torch.manual_seed(config.seed)
    model = models.build_model(config.model, config.width, classes)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    return model, optimizer


def learning_rate(base_lr: float, decay: float, step: int, epoch: int) -> float:
    """Return the learning rate of zero-based `epoch`: `base_lr` times `decay` every `step` epochs.

    It depends on the absolute epoch only, never on how many epochs a run is asked to reach, so
    training to 3 epochs and then on to 9 follows the same schedule as training to 9 at once.
    """
    return base_lr * decay ** (epoch // step)


@dataclasses.dataclass
class EpochMetrics:
    loss: float
    accuracy: float
    examples: int


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, device_data: data.DeviceData,
                    batch_size: int, generator: torch.Generator, precision: str, progress: bool,
                    description: str) -> EpochMetrics:
    """Train `model` for one pass over the training split.

    Every batch's loss goes into the sum, so a non-finite loss in any step makes the returned mean
    non-finite. The caller checks it once per epoch.
    """
    model.train()
    loss_sum = torch.zeros((), device=device_data.train_x.device)
    correct = torch.zeros((), dtype=torch.int64, device=device_data.train_x.device)
    batches = data.train_batches(device_data, batch_size, generator)
    total = math.ceil(device_data.train_count / batch_size)
    for images, labels in tqdm(batches, total=total, desc=description, disable=None if progress else True,
                               leave=False, unit="batch"):
        images = images.contiguous(memory_format=torch.channels_last)
        with autocast(images.device, precision):
            logits = model(images)
            loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
    count = device_data.train_count
    return EpochMetrics(loss=loss_sum.item() / count, accuracy=correct.item() / count, examples=count)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
             precision: str = "fp32") -> EpochMetrics:
    """Return the mean cross-entropy and the accuracy of `model` on unaugmented `images`."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for batch, batch_labels in data.eval_batches(images, labels, batch_size):
        batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(batch.device, precision):
            logits = model(batch)
            loss_sum += nn.functional.cross_entropy(logits, batch_labels, reduction="sum")
        correct += (logits.argmax(1) == batch_labels).sum()
    count = len(labels)
    return EpochMetrics(loss=loss_sum.item() / count, accuracy=correct.item() / count, examples=count)
