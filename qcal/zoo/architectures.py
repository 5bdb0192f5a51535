"""Model classes of the built-in zoo: small digits models and their shapes.

Every digits model takes (B, 1, 8, 8) images (scikit-learn's digits, pixels in [0, 1]) and
returns (B, 10) logits. All but ``TinyEncoder`` trace with ``torch.fx.symbolic_trace``;
``TinyEncoder`` deliberately does not (data-dependent control flow and a keyword
``attention_mask``) so that qcal's module-swap mode has a model to work on. The 224x224
benchmark models live in ``qcal.zoo.imagenet_like`` and are re-exported here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qcal.zoo.imagenet_like import MobileNetV2Like, ResNet18Like, init_realistic_

__all__ = [
    "DigitsCNN",
    "DigitsMLP",
    "DigitsMobileNet",
    "DigitsResNet",
    "MobileNetV2Like",
    "ResNet18Like",
    "TinyEncoder",
    "init_realistic_",
]


class DigitsCNN(nn.Module):
    """A plain CNN (no BatchNorm): conv/ReLU x2, max pool, conv/ReLU, max pool, 2 linears.

    The first layer is named ``conv_3x3_32a`` but has 40 filters, on purpose: layer names
    are labels chosen by a model's author, and qcal's tables show the real shapes
    (a question users ask: "why does conv_3x3_32a have 40 scales?").
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_3x3_32a = nn.Conv2d(1, 40, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv_3x3_64 = nn.Conv2d(40, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv_3x3_64b = nn.Conv2d(64, 64, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 2 * 2, 64)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.conv_3x3_32a(x))  # (B, 1, 8, 8) -> (B, 40, 8, 8)
        x = self.pool1(self.relu2(self.conv_3x3_64(x)))  # -> (B, 64, 4, 4)
        x = self.pool2(self.relu3(self.conv_3x3_64b(x)))  # -> (B, 64, 2, 2)
        x = self.relu4(self.fc1(self.flatten(x)))  # -> (B, 64)
        return self.fc2(x)  # -> (B, 10)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type = nn.ReLU6) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


class DepthwiseSeparable(nn.Module):
    """depthwise 3x3 (groups=C) -> BN -> ReLU6 -> pointwise 1x1 -> BN -> ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = _conv_bn(cin, cin, 3, stride=stride, groups=cin)
        self.pointwise = _conv_bn(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)


class DigitsMobileNet(nn.Module):
    """A MobileNet-v1-style digits model: depthwise-separable blocks with BN and ReLU6.

    Folding each BatchNorm into its convolution multiplies output channel c by
    ``gamma_c / sqrt(running_var_c + eps)``; in depthwise layers, where each channel sees
    one input channel only, that factor varies a lot between channels. This is the model
    family on which per-tensor weight quantization loses accuracy and per-channel holds.

    ``pruned`` output channels of the stem and of each pointwise layer that feeds a
    depthwise layer start pruned the way network slimming leaves them: BN gamma near 0
    (1e-3) and a negative beta, so after ReLU6 they are exactly 0 and get no gradient —
    they stay dead through training. The depthwise channel reading a dead channel sees
    only zeros, so its BN running variance decays to ~0 and its weights keep their
    initial values; folding multiplies them by ``gamma / sqrt(0 + eps)`` (~316). That
    channel's folded weights are ~100x larger than its neighbours' and set a per-tensor
    scale that rounds the other channels' weights to a few levels; per channel, each
    keeps its own scale. The dead channel only ever multiplies zeros, so the fp32 model
    is unaffected. This is the mechanism behind MobileNet's per-tensor collapse (Nagel et
    al., 2019, "Data-Free Quantization", section 3).
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 128),
                 pruned: int = 2) -> None:
        super().__init__()
        self.stem = _conv_bn(1, widths[0], 3)
        strides = (1, 2, 1)
        self.blocks = nn.Sequential(
            *(DepthwiseSeparable(a, b, s) for a, b, s in zip(widths[:-1], widths[1:], strides, strict=True))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)
        feeders = [self.stem, *(block.pointwise for block in self.blocks[:-1])]
        with torch.no_grad():
            for seq in feeders:
                bn, c = seq[1], seq[1].num_features
                dead = [c // (2 * pruned) + i * c // pruned for i in range(pruned)]  # evenly spread
                bn.weight[dead] = 1e-3  # not 0: a zero weight channel is a different edge case
                bn.bias[dead] = -1.0  # pre-activation 1e-3 * z - 1 < 0 unless |z| > 1000

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, 1, 8, 8) -> (B, 32, 8, 8)
        x = self.blocks(x)  # -> (B, 128, 4, 4)
        return self.fc(self.flatten(self.pool(x)))  # -> (B, 10)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (a ResNet basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))  # (B, C, H, W) -> (B, C, H, W)
        y = self.bn2(self.conv2(y))
        return self.relu2(x + y)  # the residual add


class DigitsResNet(nn.Module):
    """A small residual CNN: stem, residual block, max pool, widen, residual block, avg pool."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(1, 32, 3, act=nn.ReLU)
        self.block1 = BasicBlock(32)
        self.pool = nn.MaxPool2d(2)
        self.widen = _conv_bn(32, 64, 3, act=nn.ReLU)
        self.block2 = BasicBlock(64)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(self.stem(x))  # (B, 1, 8, 8) -> (B, 32, 8, 8)
        x = self.block2(self.widen(self.pool(x)))  # -> (B, 64, 4, 4)
        x = torch.flatten(self.avgpool(x), 1)  # -> (B, 64)
        return self.fc(x)  # -> (B, 10)


class DigitsMLP(nn.Module):
    """flatten -> Linear/ReLU -> Linear/ReLU -> Linear."""

    def __init__(self, num_classes: int = 10, hidden: tuple[int, int] = (128, 64)) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, hidden[0])
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))  # (B, 1, 8, 8) -> (B, 128)
        x = self.relu2(self.fc2(x))  # -> (B, 64)
        return self.fc3(x)  # -> (B, 10)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: LN -> multi-head self-attention -> +, LN -> MLP -> +."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.ff2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, key_bias: Tensor | None = None) -> Tensor:
        b, t, d = x.shape
        h = self.norm1(x)

        def split(z: Tensor) -> Tensor:
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, T, D) -> (B, H, T, D/H)

        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)  # (B, H, T, T)
        if key_bias is not None:
            scores = scores + key_bias  # (B, 1, 1, T): 0 for real tokens, -1e9 for padding
        attn = torch.softmax(scores, dim=-1) @ v  # (B, H, T, D/H)
        x = x + self.out_proj(attn.transpose(1, 2).reshape(b, t, d))  # (B, T, D)
        return x + self.ff2(self.act(self.ff1(self.norm2(x))))


class TinyEncoder(nn.Module):
    """A transformer encoder over the 8 rows of a digit (8 tokens of 8 features).

    ``forward(x, attention_mask=None)`` takes images (B, 1, 8, 8) or token sequences
    (B, T, 8), and an optional ``attention_mask`` (B, T) keyword, 1 for real tokens and 0
    for padding, as Hugging Face models do. The input-shape check and the "is anything
    masked?" test are Python control flow on tensor values, so ``torch.fx.symbolic_trace``
    fails on this model by design: it is the zoo's example for qcal's module-swap mode,
    where only the nn.Linear layers run in int8.
    """

    def __init__(self, num_classes: int = 10, dim: int = 32, heads: int = 2, layers: int = 2,
                 tokens: int = 8, features: int = 8) -> None:
        super().__init__()
        self.features = features
        self.embed = nn.Linear(features, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, 2 * dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if x.dim() == 4:  # images: each row of pixels is a token
            x = x.reshape(x.shape[0], -1, self.features)  # (B, 1, 8, 8) -> (B, 8, 8)
        t = x.shape[1]
        h = self.embed(x) + self.pos[:, :t]  # (B, T, 8) -> (B, T, D)
        key_bias, weights = None, None
        if attention_mask is not None and not bool(attention_mask.all()):  # skip work if nothing is padded
            keep = attention_mask.to(h.dtype)  # (B, T)
            key_bias = (1.0 - keep)[:, None, None, :] * -1e9  # (B, 1, 1, T)
            weights = keep[:, :, None]  # (B, T, 1)
        for layer in self.layers:
            h = layer(h, key_bias)
        h = self.norm(h)
        if weights is None:
            pooled = h.mean(dim=1)  # (B, T, D) -> (B, D)
        else:
            pooled = (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)  # -> (B, 10)
