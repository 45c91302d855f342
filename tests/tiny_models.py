"""Tiny CNNs shared by the metric tests and the torch.distributed worker script."""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    """Two conv stages (``layer1`` at the input's grid, ``layer2`` at half of it) and a
    linear head; ``scale`` is an additional forward argument for Captum-style tests."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x, scale=1.0):
        return self.fc(self.layer2(self.layer1(x * scale)).mean((2, 3)))
