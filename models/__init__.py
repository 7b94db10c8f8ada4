"""Model registry: every model is built by name, for 32x32 images, with a channel-width multiplier."""

from __future__ import annotations

from typing import Callable

from torch import nn

from models.resnet import resnet18, resnet34
from models.small import small_cnn
from models.vgg import vgg11, vgg13, vgg16, vgg19

MODELS: dict[str, Callable[[float, int], nn.Module]] = {
    "small": small_cnn,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet18": resnet18,
    "resnet34": resnet34,
}


def build_model(name: str, width: float, classes: int) -> nn.Module:
    """Build model `name` with its channel counts multiplied by `width`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return MODELS[name](width, classes)


def scale(channels: int, width: float) -> int:
    """Return `channels` times `width`, rounded, and at least 1."""
    return max(1, int(round(channels * width)))
