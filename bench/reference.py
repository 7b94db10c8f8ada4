"""The baseline a user would otherwise write: a torchvision DataLoader over PIL images, and a plain loop."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import data


class PILDataset(torch.utils.data.Dataset):
    """Training images as PIL images, augmented one by one with torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms

        self.images = images.transpose(0, 2, 3, 1)  # (N, 32, 32, 3), as PIL expects
        self.labels = labels
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=data.PADDING),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(data.MEAN, data.STD),
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def reference_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int = 2):
    return torch.utils.data.DataLoader(PILDataset(images, labels), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0)


def reference_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader) -> int:
    """Train one epoch the plain way: a loss read back to the host every step, as most examples do."""
    model.train()
    seen = 0
    for images, labels in loader:
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        seen += len(labels)
    return seen
