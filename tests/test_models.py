"""The model registry: every model builds, honours the width and classifies 32x32 images."""

from __future__ import annotations

import pytest
import torch

import models


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_outputs_one_logit_per_class(name):
    model = models.build_model(name, 0.125, 100)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["vgg11", "vgg16", "resnet18"])
def test_width_scales_parameters(name):
    narrow = sum(p.numel() for p in models.build_model(name, 0.25, 10).parameters())
    wide = sum(p.numel() for p in models.build_model(name, 0.5, 10).parameters())
    assert 3 < wide / narrow < 5  # convolution weights grow with the square of the width


def test_vgg16_full_width_size():
    # 14.7 M parameters, as the CIFAR VGG16 of kuangliu/pytorch-cifar.
    parameters = sum(p.numel() for p in models.build_model("vgg16", 1.0, 10).parameters())
    assert 14_700_000 < parameters < 14_800_000


def test_unknown_model_lists_known():
    with pytest.raises(ValueError, match="vgg11.*vgg16") as error:
        models.build_model("alexnet", 1.0, 10)
    assert "resnet18" in str(error.value)
