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


def read_image_with_alpha(path: str | Path, size: tuple[int, int] | None = None, grey: bool = False, *,
                          what: str = "image") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like `read_image`, plus the image's transparency: ((C, H, W) colours, (H, W) alpha in [0, 1] or
    None when the file has no alpha channel)."""
    try:
        with Image.open(path) as img:
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            img = img.convert("RGBA")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            rgba = np.asarray(img, dtype=np.float32) / 255.0
            colours = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
    except (OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from None
    image = torch.from_numpy(colours[None] if colours.ndim == 2 else colours.transpose(2, 0, 1).copy())
    return image, torch.from_numpy(rgba[..., 3].copy()) if has_alpha else None
