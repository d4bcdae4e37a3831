"""The network shapes used in the Neural Cleanse paper, and a small ResNet for natural images, by name, so
checkpoints can rebuild them."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn


def _hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def mnist_net(num_classes: int = 10, in_channels: int = 1, image_size: int | Sequence[int] = 28) -> nn.Sequential:
    """The paper's MNIST model (from BadNets): 2 conv + 2 dense (28x28 inputs in the paper)."""
    h, w = (((v - 4) // 2 - 4) // 2 for v in _hw(image_size))
    if h < 1 or w < 1:
        raise ValueError("the MNIST net needs images of at least 16x16")
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * h * w, 512), nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def gtsrb_net(num_classes: int = 43, in_channels: int = 3, image_size: int | Sequence[int] = 32) -> nn.Sequential:
    """The paper's GTSRB model: 3 blocks of two 3x3 convs (32, 64, 128), pool, dropout; dense 512."""
    layers: list[nn.Module] = []
    width_in = in_channels
    for width in (32, 64, 128):
        layers += [
            nn.Conv2d(width_in, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.2),
        ]
        width_in = width
    h, w = (v // 8 for v in _hw(image_size))
    if h < 1 or w < 1:
        raise ValueError("the GTSRB net needs images of at least 8x8")
    layers += [
        nn.Flatten(),
        nn.Linear(128 * h * w, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    ]
    return nn.Sequential(*layers)


def cifar10_net(num_classes: int = 10, in_channels: int = 3, image_size: int | Sequence[int] = 32) -> nn.Sequential:
    """The paper's net for 32×32 colour images (its GTSRB shape: three blocks of two 3x3 convs, dense 512),
    for CIFAR-10's ten classes."""
    return gtsrb_net(num_classes, in_channels, image_size)


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3x3 conv-BN, a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


class ResNet20(nn.Module):
    """A ResNet-20 (He et al. 2016, the CIFAR design: three stages of three basic blocks, global average
    pooling), `width` channels in its first stage (16 in the paper; 8 trains in minutes on two CPU cores)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, ch = [], width
        for stage in range(3):
            out = width * 2 ** stage
            for i in range(blocks):
                layers.append(BasicBlock(ch, out, 2 if stage > 0 and i == 0 else 1))
                ch = out
        self.stages = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))))


def resnet20(num_classes: int = 10, in_channels: int = 3, image_size: int | Sequence[int] = 32,
             width: int = 8) -> nn.Module:
    return ResNet20(num_classes, in_channels, width)


def tiny_net(num_classes: int = 4, in_channels: int = 1, image_size: int | Sequence[int] = 8) -> nn.Sequential:
    """A very small CNN for tests and quick experiments."""
    h, w = _hw(image_size)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * h * w, 32), nn.ReLU(),
        nn.Linear(32, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mnist": mnist_net,
    "gtsrb": gtsrb_net,
    "cifar10": cifar10_net,
    "resnet20": resnet20,
    "tiny": tiny_net,
}

DEFAULT_ARCH_FOR_DATASET = {"mnist": "mnist", "gtsrb": "gtsrb", "cifar10": "cifar10", "cifar-10": "cifar10"}


def build_architecture(name: str, **kwargs) -> nn.Module:
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None
    return factory(**kwargs)
