"""A small convolutional network for tests and quick CPU runs."""

from torch import nn

import models


def small_cnn(width: float, classes: int) -> nn.Sequential:
    """Two 3x3 convolutions of 32 and 64 channels (times `width`), each pooled, and a linear layer."""
    first, second = models.scale(32, width), models.scale(64, width)
    return nn.Sequential(
        nn.Conv2d(3, first, 3, padding=1, bias=False),
        nn.BatchNorm2d(first),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(4),
        nn.Conv2d(first, second, 3, padding=1, bias=False),
        nn.BatchNorm2d(second),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(second, classes),
    )
