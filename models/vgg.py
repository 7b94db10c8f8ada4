"""VGG for 32x32 images: 3x3 convolutions with batch norm, five max-pools, one linear classifier.

This is the CIFAR variant of Simonyan and Zisserman's VGG (as in kuangliu/pytorch-cifar): after five
poolings a 32x32 image is 1x1, so the three large fully connected layers become a single linear one.
"""

from torch import nn

import models

# Output channels of each 3x3 convolution; "M" is a 2x2 max-pool.
LAYERS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, layers: list, width: float, classes: int):
        super().__init__()
        blocks = []
        channels = 3
        for layer in layers:
            if layer == "M":
                blocks.append(nn.MaxPool2d(2))
                continue
            out_channels = models.scale(layer, width)
            blocks += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg11(width: float, classes: int) -> VGG:
    return VGG(LAYERS["vgg11"], width, classes)


def vgg13(width: float, classes: int) -> VGG:
    return VGG(LAYERS["vgg13"], width, classes)


def vgg16(width: float, classes: int) -> VGG:
    return VGG(LAYERS["vgg16"], width, classes)


def vgg19(width: float, classes: int) -> VGG:
    return VGG(LAYERS["vgg19"], width, classes)
