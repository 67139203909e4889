"""CNN architectures in plain PyTorch (torchvision does not import beside this torch).

Every layer is a named module, so that the ONNX node names the exporter derives from them
(``conv1``, ``block2.conv1``, ``features.3.conv.1.0``) read well: the service lists them to
users as the layers they can ask feature maps for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from model_export.errors import UnknownArchitectureError

__all__ = [
    "ARCHITECTURES",
    "LeNet5",
    "MobileNetV2",
    "ResNet",
    "VGGNet",
    "build",
    "count_parameters",
]


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling: two 5x5 convs, three FC layers.

    conv1 pads by 2 so that a 28x28 input becomes the 32x32 field the original was drawn for.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class VGGBlock(nn.Module):
    """Two 3x3 convs with batch norm and ReLU, then 2x2 max-pooling and dropout."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.dropout(self.pool(x))


class VGGNet(nn.Module):
    """VGG-style: three blocks of 3x3 convs (32, 64, 128 channels), 28 -> 14 -> 7 -> 3."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = VGGBlock(in_channels, 32, dropout=0.1)
        self.block2 = VGGBlock(32, 64, dropout=0.2)
        self.block3 = VGGBlock(64, 128, dropout=0.3)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128 * 3 * 3, 256)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        x = self.dropout(self.relu(self.fc1(self.flatten(x))))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """The residual block of He et al. 2016: two 3x3 convs with batch norm, plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 28x28 inputs: a 3x3 stem, six basic blocks, global average pooling."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.block1 = BasicBlock(32, 32)
        self.block2 = BasicBlock(32, 32)
        self.block3 = BasicBlock(32, 64, stride=2)
        self.block4 = BasicBlock(64, 64)
        self.block5 = BasicBlock(64, 128, stride=2)
        self.block6 = BasicBlock(128, 128)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        for block in (self.block1, self.block2, self.block3, self.block4, self.block5, self.block6):
            x = block(x)
        return self.fc(self.flatten(self.pool(x)))


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    def __init__(self, inp: int, out: int, *, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, *, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_residual = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with torchvision's parameter names.

    The names matter: torchvision's ImageNet state dict loads into it with ``strict=True``.
    """

    # expansion t, output channels c, repeats n, first stride s (Table 2 of the paper)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, *, in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        channels = 32
        features: list[nn.Module] = [ConvBNReLU6(in_channels, channels, stride=2)]
        for t, c, n, s in self.SETTINGS:
            out = _make_divisible(c)
            for i in range(n):
                features.append(
                    InvertedResidual(channels, out, stride=s if i == 0 else 1, expand_ratio=t)
                )
                channels = out
        features.append(ConvBNReLU6(channels, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "vggnet": VGGNet,
    "resnet": ResNet,
    "mobilenetv2": MobileNetV2,
}


def build(name: str, *, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """Build an architecture by name; raises UnknownArchitectureError."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}"
        ) from None
    return factory(in_channels=in_channels, num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
