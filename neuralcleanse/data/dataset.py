"""The one in-memory container every loader returns and every algorithm consumes."""
from __future__ import annotations

from dataclasses import InitVar, dataclass

import math

import numpy as np
import torch

from neuralcleanse.errors import InputError

# Rounding in resizing or stamping may step a hair outside [0, 1]; a normalised image is far outside.
_SLACK = 1e-4


@dataclass
class ImageDataset:
    """Images as float32 NCHW in raw pixel space [0, 1], labels as int64.

    Raw pixel space is where triggers live: the model's own preprocessing is applied after
    the trigger, inside the model wrapper, never here.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str = "data"
    check_range: InitVar[bool] = True

    def __post_init__(self, check_range: bool) -> None:
        if self.x.ndim != 4:
            raise InputError(f"images must be NCHW, got shape {tuple(self.x.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise InputError(f"{self.x.shape[0]} images but {self.y.shape[0]} labels")
        self.x = self.x.float()
        self.y = self.y.long()
        if check_range and self.x.numel():
            # Normalised tensors would be stamped in the wrong space without any error later.
            low, high = (float(v) for v in torch.aminmax(self.x))
            if not (math.isfinite(low) and math.isfinite(high)):
                raise InputError("images contain NaN or Inf")
            if low < -_SLACK or high > 1 + _SLACK:
                raise InputError(
                    f"images must be raw pixels in [0, 1], found {low:.3g}..{high:.3g}: triggers are stamped on raw "
                    "pixels and the model's own scaling or normalisation comes after, so pass un-normalised images "
                    "and describe the model's input with Preprocessing(pixel_scale=..., mean=..., std=...)")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: torch.Tensor | np.ndarray | slice) -> "ImageDataset":
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return ImageDataset(self.x[index], self.y[index], self.num_classes, self.name, check_range=False)

    def per_class_sample(self, per_class: int, seed: int = 0) -> "ImageDataset":
        """Up to `per_class` images of each label, drawn reproducibly."""
        gen = torch.Generator().manual_seed(seed)
        picks = []
        for label in range(self.num_classes):
            idx = torch.nonzero(self.y == label).flatten()
            picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
        return self.subset(torch.cat(picks))

    def random_sample(self, n: int, seed: int = 0) -> "ImageDataset":
        gen = torch.Generator().manual_seed(seed)
        return self.subset(torch.randperm(len(self), generator=gen)[: min(n, len(self))])


@dataclass
class DatasetSplits:
    train: ImageDataset
    test: ImageDataset


def to_nchw_unit(x: np.ndarray) -> torch.Tensor:
    """Accepts uint8 0-255 or float [0,1] images shaped (N,H,W), (N,H,W,C) or (N,C,H,W).

    The channel axis is taken as the one of size 1 or 3 (or 4) next to the spatial axes; when
    both ends could be channels, channels-last wins because that is how image files store them.
    """
    arr = np.asarray(x)
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    elif arr.ndim == 4:
        if arr.shape[-1] in (1, 3, 4):
            arr = arr.transpose(0, 3, 1, 2)
        elif arr.shape[1] not in (1, 3, 4):
            raise ValueError(f"cannot find a channel axis of size 1 or 3 in image shape {arr.shape}")
    else:
        raise ValueError(f"images must have 3 or 4 dimensions, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if out.size and not np.isfinite(out).all():
            raise ValueError("images contain NaN or Inf")
        if out.size and (out.min() < 0.0 or out.max() > 1.0):
            raise ValueError(
                f"float images must lie in [0, 1] (found {out.min():.3g}..{out.max():.3g}); "
                "store uint8 0-255 or rescale"
            )
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("integer images must lie in 0..255")
        out = arr.astype(np.float32) / 255.0
    else:
        raise ValueError(f"unsupported image dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(out))
