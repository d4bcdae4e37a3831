"""The network shapes used in the Neural Cleanse paper, by name, so checkpoints can rebuild them."""
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
    "tiny": tiny_net,
}

DEFAULT_ARCH_FOR_DATASET = {"mnist": "mnist", "gtsrb": "gtsrb"}


def build_architecture(name: str, **kwargs) -> nn.Module:
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None
    return factory(**kwargs)
