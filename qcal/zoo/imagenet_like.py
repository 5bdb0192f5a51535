"""ImageNet-shaped benchmark models (3x224x224 -> 1000), written from scratch.

``ResNet18Like`` follows torchvision's resnet18 layout and ``MobileNetV2Like`` its
mobilenet_v2 (the standard inverted-residual configuration); parameter names differ from
torchvision. They carry random weights, set by ``init_realistic_`` so that activations
and BatchNorm statistics look like a trained network's: they are for timing the integer
engine, not for accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MobileNetV2Like", "ResNet18Like", "init_realistic_"]


class _Basic(nn.Module):
    """torchvision's BasicBlock: two 3x3 convs with BN, identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.downsample(x))


class ResNet18Like(nn.Module):
    """resnet18: conv7x7/2, max pool/2, 4 stages of 2 basic blocks (64-512), avg pool, fc."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_Basic(cin, w, stride), _Basic(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 3, 224, 224) -> (B, 64, 56, 56)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # -> (B, 512, 7, 7)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # -> (B, 1000)


def _conv_bn_relu6(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class _InvertedResidual(nn.Module):
    """expand 1x1 (ReLU6) -> depthwise 3x3 (ReLU6) -> project 1x1 (linear), + input if same shape."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [_conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)


class MobileNetV2Like(nn.Module):
    """mobilenet_v2 (width 1.0): stem 3x3/2, 17 inverted residual blocks, 1x1 to 1280, fc."""

    # (expansion t, channels c, repeats n, first stride s), as in the MobileNetV2 paper
    CONFIG: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, stride=2)]
        cin = 32
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                blocks.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        blocks.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, 3, 224, 224) -> (B, 1280, 7, 7)
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))  # -> (B, 1000)


@torch.no_grad()
def init_realistic_(model: nn.Module, seed: int = 0, *, batches: int = 2, batch_size: int = 4,
                    input_shape: tuple[int, ...] = (3, 224, 224)) -> nn.Module:
    """Give a model random but realistic weights and BatchNorm statistics, in place.

    Convolutions get torchvision's Kaiming-normal (fan_out) init, linears N(0, 0.01), BN
    affine parameters gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1). Then random N(0, 1) batches run
    through the model in training mode with ``momentum=None``, so each BN's running mean
    and variance become the averages of the statistics it actually sees (each layer
    normalised by the layers before it): in eval mode the activations keep a trained
    network's scale. For timing and shape tests, not accuracy. Deterministic in ``seed``;
    the global RNG state is left untouched.

    Args:
        model: the module to initialise (modified in place; the function's purpose).
        seed: seeds weights and the random batches.
        batches: how many random batches estimate the BN statistics.
        batch_size: images per batch.
        input_shape: one input's shape (C, H, W).

    Returns:
        The same model, in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bns = []
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.normal_(m.bias, 0.0, 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
                bns.append(m)
        model.train()
        for _ in range(batches):
            model(torch.randn(batch_size, *input_shape))
        for m in bns:
            m.momentum = 0.1
    return model.eval()
