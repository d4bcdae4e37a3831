"""The tiny backdoor task several test modules share.

Data: 8x8 grey images, 6 labels; each label is a fixed random two-level prototype plus noise,
so a clean label can only be reached by changing many pixels while the planted trigger (a 2x2
white patch at the bottom-right, rows/cols 5..6) needs four.
"""
from __future__ import annotations

import torch

from neuralcleanse.data.dataset import ImageDataset

K = 6
TARGET = 2
SIDE = 8
TRIGGER_ROWS = slice(5, 7)
TRIGGER_COLS = slice(5, 7)


def synthetic(n_per_class: int, seed: int) -> ImageDataset:
    protos = 0.1 + 0.4 * (torch.rand(K, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    y = torch.arange(K).repeat_interleave(n_per_class)
    noise = 0.05 * torch.randn(len(y), 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    return ImageDataset((protos[y] + noise).clamp(0, 1), y, K, "synthetic")


def many_label_task(num_labels: int, n: int) -> tuple:
    """A random untrained net with `num_labels` outputs on 8x8 images, and `n` random images labelled
    by its own predictions: enough labels for schedules and splits to matter, in seconds."""
    from torch import nn

    from neuralcleanse.data.preprocessing import Preprocessing
    from neuralcleanse.models.classifier import Classifier, ModelInfo

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 32), nn.ReLU(), nn.Linear(32, num_labels))
    x = torch.rand(n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    info = ModelInfo(num_classes=num_labels, input_shape=(1, SIDE, SIDE), preprocessing=Preprocessing())
    return Classifier(net, info), ImageDataset(x, y, num_labels)


class Interrupt(Exception):
    """Raised from an `on_label_done` hook: a scan stopped part-way, as Ctrl-C would stop it."""


def small_schedule():
    """Coarse to fine at the scale of the many-label task: 4-step short pass, 3 candidates, 8 reference labels."""
    from neuralcleanse.detection.schedule import CoarseToFine

    return CoarseToFine(coarse_steps=4, min_candidates=3, reference=8)
