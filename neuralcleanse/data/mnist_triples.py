"""A 1,000-label task from real data: three MNIST digits side by side (1x28x84), label = the number
they spell (000-999). The paper's face models have 1,283 and 2,622 labels; this is the closest
thing that needs nothing beyond MNIST, and what the many-label scans are measured on.

Each image draws its label uniformly, then one image of each of its digits from the same MNIST
split (train images for the train split, test images for the test split), all from `seed`, so
the task is the same on every machine.
"""
from __future__ import annotations

import torch

from neuralcleanse.data.dataset import DatasetSplits, ImageDataset
from neuralcleanse.data.mnist import load_mnist

NUM_CLASSES = 1000
DEFAULT_SIZES = (200_000, 10_000)


def compose_triples(digits: ImageDataset, n: int, seed: int) -> ImageDataset:
    """`n` images of three digits from `digits` side by side, labels spread evenly over 000-999."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=gen) % NUM_CLASSES  # every label n/1000 times, in random order
    by_digit = [torch.nonzero(digits.y == d).flatten() for d in range(10)]
    places = []
    for power in (100, 10, 1):
        digit = labels // power % 10
        pick = torch.empty(n, dtype=torch.long)
        for d in range(10):
            rows = torch.nonzero(digit == d).flatten()
            pick[rows] = by_digit[d][torch.randint(len(by_digit[d]), (len(rows),), generator=gen)]
        places.append(digits.x[pick])
    return ImageDataset(torch.cat(places, dim=3), labels, NUM_CLASSES, f"mnist-triples-{digits.name}",
                        check_range=False)


def load_mnist_triples(train_size: int = DEFAULT_SIZES[0], test_size: int = DEFAULT_SIZES[1],
                       seed: int = 0) -> DatasetSplits:
    """Train images from MNIST's training digits, test images from its test digits."""
    mnist = load_mnist()
    return DatasetSplits(compose_triples(mnist.train, train_size, seed),
                         compose_triples(mnist.test, test_size, seed + 1))
