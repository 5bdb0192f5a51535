"""Models for the repair tests: the issue's depthwise-separable digits model with one dead
channel and ReLU, trained here in seconds (seeded, one thread), and random conv pairs."""

from __future__ import annotations

import torch
from torch import nn

from qcal.zoo.architectures import DigitsMobileNet
from qcal.zoo.datasets import digits_splits
from qcal.zoo.training import TrainConfig, train_classifier


def relu_mobilenet(widths: tuple[int, ...] = (16, 32, 64, 64)) -> nn.Module:
    """DigitsMobileNet with ReLU instead of ReLU6 and one pruned (dead) channel per feeder:
    BN folding leaves the depthwise channel reading it with weights ~300x its neighbours'."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DigitsMobileNet(widths=widths, pruned=1)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.ReLU6):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, nn.ReLU())
    return model


def trained_relu_mobilenet(epochs: int = 8) -> nn.Module:
    x, y = digits_splits().train
    model = relu_mobilenet()
    with torch.random.fork_rng(devices=[]):
        train_classifier(model, x, y, TrainConfig(epochs=epochs, seed=0))
    return model.eval().requires_grad_(False)


class ConvPair(nn.Module):
    """conv -> BN -> activation -> conv (optionally grouped): the unit CLE works on."""

    def __init__(self, cin: int, mid: int, cout: int, groups: int, act: nn.Module, pool: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, mid, 3, padding=1)
        self.bn = nn.BatchNorm2d(mid)
        self.act = act
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.b = nn.Conv2d(mid, cout, 3 if groups > 1 else 1, padding=1 if groups > 1 else 0, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.pool(self.act(self.bn(self.a(x)))))


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of a float or quantized model, in [0, 1]."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
