"""Small models and data shared by the whole-model tests (graph, calibration, model)."""

from __future__ import annotations

import torch
from torch import nn

from qcal.zoo.architectures import DigitsCNN, DigitsMLP, DigitsMobileNet, DigitsResNet
from qcal.zoo.datasets import digits_splits

#: The issue's three architectures: a plain CNN, depthwise-separable with BN and ReLU6,
#: residual adds with pooling (plus an MLP).
ARCHITECTURES = {"cnn": DigitsCNN, "mobilenet": DigitsMobileNet, "resnet": DigitsResNet, "mlp": DigitsMLP}
#: Each preset on the torch engine it is meant for (the generic ones on fbgemm).
MATCHING_ENGINE = {"fbgemm_default": "fbgemm", "qnnpack_default": "qnnpack",
                   "per_tensor_affine": "fbgemm", "per_channel_symmetric": "fbgemm"}


def make_model(name: str, seed: int = 0) -> nn.Module:
    """An untrained model with non-trivial BatchNorm statistics (so folding matters), eval mode."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[name]()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.2, 2.0)
            mod.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def digits_data(calib_batches: int = 3, batch: int = 16) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Calibration batches from the digits calib split, and held-out test images."""
    splits = digits_splits()
    x_calib = splits.calib[0][: calib_batches * batch]
    return list(x_calib.split(batch)), splits.test[0][:64]
