"""The base networks, each built from the data's input shape (C, H, W) and class count. They output
logits; the softmax and the noise layer come after them (layers.py).

convnet_small -- two 3x3 conv blocks (conv, batch norm, ReLU, 2x2 max-pool) and a hidden linear layer
                 with dropout: the CPU network for 28x28 and 8x8 digits (~0.4M weights at 28x28).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _flat_size(features: nn.Module, in_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *in_shape)).numel()


class SmallConvNet(nn.Module):
    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.25,
    ):
        super().__init__()
        layers, c_in = [], in_shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(_flat_size(self.features, in_shape), hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
