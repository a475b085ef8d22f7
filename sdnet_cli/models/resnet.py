"""ResNet, SDNet and SDNet-All from one builder: the variants differ only in which convs are CSC layers.

Module names are chosen so that ``state_dict`` keys equal the authors' released checkpoints
(Dai et al., NeurIPS 2022): ``layer0`` is the stem, ``layer1..4`` the stages, ``linear`` the head, and a
CSC conv is a ``DictConv`` whose parameters live under ``.dn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch
from torch import nn

from .csc import DictConv

ConvFactory = Callable[[int, int, int, int, int], nn.Module]
"""(in_channels, out_channels, kernel_size, stride, padding) -> a conv-like module without bias."""

Stem = Literal["cifar", "imagenet"]


def plain_conv(cin: int, cout: int, k: int, stride: int, padding: int) -> nn.Module:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)


def csc_conv(lam: float = 0.1, n_steps: int = 2, square_noise: bool = True) -> ConvFactory:
    """A factory of CSC layers with shared solver settings."""

    def make(cin: int, cout: int, k: int, stride: int, padding: int) -> nn.Module:
        return DictConv(
            cin, cout, k, stride=stride, padding=padding, lam=lam, n_steps=n_steps, square_noise=square_noise
        )

    return make


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, conv: ConvFactory) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # 1x1 projections stay ordinary convs in every variant
            self.shortcut = nn.Sequential(plain_conv(cin, cout, 1, stride, 0), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


Sparsity = Literal["none", "stem", "all"]
"""Which convs are CSC layers: none (ResNet), the stem (SDNet), every 3x3 conv (SDNet-All)."""


def make_stem(width: int, stem: Stem, conv: ConvFactory, sparse: bool, sparse_downsample: bool) -> nn.Sequential:
    """CIFAR: conv3x3 s1 + BN (+ReLU for a plain conv). ImageNet: conv7x7 s2 + BN + max-pool,
    where SDNet-All replaces the max-pool by a second CSC 3x3 stride-2 layer (+BN)."""
    kernel, stride, padding = (3, 1, 1) if stem == "cifar" else (7, 2, 3)
    layers: list[nn.Module] = [conv(3, width, kernel, stride, padding), nn.BatchNorm2d(width)]
    if not sparse:  # a CSC code is already non-negative
        layers.append(nn.ReLU(inplace=True))
    if stem == "imagenet":
        if sparse_downsample:
            layers += [conv(width, width, 3, 2, 1), nn.BatchNorm2d(width)]
        else:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """CIFAR/ImageNet ResNet with BasicBlocks; ``sparse`` picks which convs ``csc`` builds."""

    layer1: nn.Sequential  # the four stages, added by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        width: int = 64,
        stem: Stem = "cifar",
        sparse: Sparsity = "none",
        csc: ConvFactory | None = None,
    ) -> None:
        super().__init__()
        sparse_conv = csc if csc is not None else csc_conv()
        stem_conv = sparse_conv if sparse != "none" else plain_conv
        block_conv = sparse_conv if sparse == "all" else plain_conv
        self.layer0 = make_stem(width, stem, stem_conv, sparse != "none", sparse_downsample=sparse == "all")
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, cout, stride if j == 0 else 1, block_conv))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer0(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.linear(self.features(x)))
