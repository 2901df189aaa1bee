"""The base networks, each built from the data's input shape (C, H, W) and class count. They output
logits; the softmax and the noise layer come after them (layers.py). Their hyperparameters' one home is
their file in conf/model/ (no defaults here).

convnet_small -- two 3x3 conv blocks (conv, batch norm, 2x2 max-pool, ReLU) and a hidden linear layer
                 with dropout: the CPU network for 28x28 and 8x8 digits (~0.4M weights at 28x28).
convnet_cifar -- cuda-convnet's "layers-18pct" network, which the paper used for SVHN and CIFAR-10:
                 three 5x5 conv layers (32, 32, 64 filters) with 3x3 stride-2 pooling (max, then
                 average) and local response normalisation, then one linear layer (~80k weights).
                 About 18% test error on clean CIFAR-10 in its original recipe.
resnet18      -- torchvision's ResNet-18, optionally with a 3x3 stride-1 stem and no max-pool for
                 32x32 images (``small_stem``), and with its first layer taking C input channels.
alexnet       -- torchvision's AlexNet, for ImageNet-sized images (at least 63x63).
The peers' MNIST networks (their authors' code; docs/method.md, "The peers' protocols"):
lenet5        -- T-Revision's and VolMinNet's LeNet-5: conv 6 5x5 (pad 2), ReLU, max-pool 2; conv 16 5x5,
                 ReLU, max-pool 2; linear 120, ReLU; 84, ReLU; K. 61,706 weights on 28x28 with 10 classes.
mlp           -- Patrini et al.'s and Dual-T's multilayer perceptron: linear layers of ``hidden`` units, each
                 followed by a ReLU and dropout, then K. 118,282 weights with 784-128-128-10.
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
        channels: Sequence[int],
        hidden: int,
        dropout: float,
    ):
        super().__init__()
        if not channels or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in channels):
            raise ValueError(f"model.channels: {list(channels)} must be whole numbers >= 1")
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"model.hidden: {hidden!r} must be a whole number >= 1")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"model.dropout: {dropout!r} must be in [0, 1)")
        layers, c_in = [], in_shape[0]
        for c in channels:
            # The pool before the ReLU: the same outputs and gradients as ReLU then pool (max and ReLU commute),
            # with the ReLU on a quarter of the values: 1.12x the training speed on one CPU thread.
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.MaxPool2d(2)]
            layers.append(nn.ReLU(inplace=True))
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


class ConvNetCifar(nn.Module):
    """cuda-convnet layers-18pct: conv5x5(32) -> maxpool3/2 -> ReLU -> LRN -> conv5x5(32) -> ReLU ->
    avgpool3/2 -> LRN -> conv5x5(64) -> ReLU -> avgpool3/2 -> linear. LRN over 3 maps, alpha 5e-5,
    beta 0.75 as in its layer file."""

    def __init__(self, in_shape: Sequence[int], num_classes: int):
        super().__init__()
        c = in_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.MaxPool2d(3, 2, padding=1), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, padding=1),
            nn.LocalResponseNorm(3, alpha=5e-5, beta=0.75),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, padding=1),
            nn.Flatten(),
        )
        self.head = nn.Linear(_flat_size(self.features, in_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LeNet5(nn.Module):
    def __init__(self, in_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(_flat_size(self.features, in_shape), 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden: Sequence[int], dropout: float):
        super().__init__()
        if not isinstance(hidden, Sequence) or isinstance(hidden, str) or not hidden or any(
            not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden
        ):
            shown = list(hidden) if isinstance(hidden, Sequence) and not isinstance(hidden, str) else hidden
            raise ValueError(f"model.hidden: {shown!r} must be a list of whole numbers >= 1, one per hidden layer")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"model.dropout: {dropout!r} must be in [0, 1)")
        layers, width = [nn.Flatten()], int(torch.Size(in_shape).numel())
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def resnet18(in_shape: Sequence[int], num_classes: int, small_stem: bool) -> nn.Module:
    if not isinstance(small_stem, bool):
        raise ValueError(f"model.small_stem: {small_stem!r} must be true or false")
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    if small_stem:  # 32x32 inputs: keep the resolution the 7x7/2 stem and max-pool would throw away
        net.conv1 = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_shape[0] != 3:
        net.conv1 = nn.Conv2d(in_shape[0], 64, 7, 2, 3, bias=False)
    return net


def alexnet(in_shape: Sequence[int], num_classes: int, dropout: float) -> nn.Module:
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"model.dropout: {dropout!r} must be in [0, 1)")
    from torchvision.models import alexnet as tv_alexnet

    net = tv_alexnet(weights=None, num_classes=num_classes, dropout=dropout)
    if in_shape[0] != 3:
        net.features[0] = nn.Conv2d(in_shape[0], 64, 11, 4, 2)
    return net


def penultimate(net: nn.Module) -> nn.Linear:
    """The net's last linear layer: its input is the penultimate-layer features (every network here ends
    in one: SmallConvNet's and ConvNetCifar's head, ResNet's fc, AlexNet's classifier)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no linear layer whose input could serve as features")
    return linears[-1]
