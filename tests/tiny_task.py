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
