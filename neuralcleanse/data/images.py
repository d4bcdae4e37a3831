"""One image file as a tensor in raw pixel space: the single place where PIL images become tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neuralcleanse.errors import InputError


def read_image(path: str | Path, size: tuple[int, int] | None = None, grey: bool = False, *,
               resample: Image.Resampling = Image.Resampling.BILINEAR, what: str = "image") -> torch.Tensor:
    """The image at `path` as a float32 (C, H, W) tensor in [0, 1], C = 1 when `grey` else 3.

    `size` (H, W) resizes it when it differs. `what` names the file in the InputError raised when it
    cannot be read or decoded (PIL decodes lazily, so conversion and resizing fail the same way).
    """
    try:
        with Image.open(path) as img:
            img = img.convert("L" if grey else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), resample)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, Image.DecompressionBombError) as exc:  # a bomb is no OSError, and is bad input too
        raise InputError(f"cannot read {what} {path}: {exc}") from None
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
