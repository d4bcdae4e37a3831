"""Triggers: a mask and a pattern in raw pixel space, and the one function that stamps them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch


def apply_trigger(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x' = (1 - m)·x + m·p, broadcasting leading dimensions.

    x: (..., C, H, W); mask: (..., 1, H, W) or (H, W), shared across colour channels;
    pattern: (..., C, H, W). Written as x + m·(p - x) so autograd keeps one product.
    """
    if mask.ndim == 2:
        mask = mask[None]
    return x + mask * (pattern - x)


@dataclass
class Trigger:
    """mask (H, W) and pattern (C, H, W), both in [0, 1] raw pixel space."""

    mask: torch.Tensor
    pattern: torch.Tensor

    def __post_init__(self) -> None:
        self.mask = torch.as_tensor(self.mask, dtype=torch.float32)
        self.pattern = torch.as_tensor(self.pattern, dtype=torch.float32)
        if self.mask.ndim == 3 and self.mask.shape[0] == 1:
            self.mask = self.mask[0]
        if self.mask.ndim != 2 or self.pattern.ndim != 3:
            raise ValueError("a trigger needs a (H,W) mask and a (C,H,W) pattern")
        if tuple(self.mask.shape) != tuple(self.pattern.shape[1:]):
            raise ValueError(f"mask {tuple(self.mask.shape)} and pattern {tuple(self.pattern.shape)} sizes differ")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return apply_trigger(x, self.mask.to(x.device), self.pattern.to(x.device))

    @property
    def l1(self) -> float:
        return float(self.mask.abs().sum())

    def to_dict(self) -> dict[str, Any]:
        return {"mask": self.mask.clone(), "pattern": self.pattern.clone()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trigger":
        return cls(torch.as_tensor(np.asarray(d["mask"])), torch.as_tensor(np.asarray(d["pattern"])))


POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


def patch_trigger(
    input_shape: Sequence[int],
    size: int = 4,
    position: str | tuple[int, int] = "bottom-right",
    colour: float | Sequence[float] = 1.0,
    margin: int = 1,
    pattern_image: np.ndarray | torch.Tensor | None = None,
) -> Trigger:
    """A square patch trigger, as in BadNets.

    position: a named corner or (row, col) of the patch's top-left pixel.
    colour: grey level or one value per channel in [0,1]; ignored when `pattern_image`
    (size×size or C×size×size, values in [0,1]) gives the patch's content.
    margin: pixels between the patch and the image border for named positions.
    """
    c, h, w = (int(v) for v in input_shape)
    if size < 1 or size + margin > min(h, w):
        raise ValueError(f"a {size}px trigger with margin {margin} does not fit a {h}x{w} image")
    if isinstance(position, str):
        rows = {"top": margin, "bottom": h - size - margin, "center": (h - size) // 2}
        cols = {"left": margin, "right": w - size - margin, "center": (w - size) // 2}
        if position == "center":
            r, col = rows["center"], cols["center"]
        elif position in POSITIONS:
            vert, horiz = position.split("-")
            r, col = rows[vert], cols[horiz]
        else:
            raise ValueError(f"unknown position {position!r}; use one of {POSITIONS} or (row, col)")
    else:
        r, col = (int(v) for v in position)
        if not (0 <= r <= h - size and 0 <= col <= w - size):
            raise ValueError(f"a {size}px patch at {(r, col)} falls outside the {h}x{w} image")
    mask = torch.zeros(h, w)
    mask[r : r + size, col : col + size] = 1.0
    pattern = torch.zeros(c, h, w)
    if pattern_image is not None:
        img = torch.as_tensor(np.asarray(pattern_image), dtype=torch.float32)
        if img.ndim == 2:
            img = img[None].expand(c, -1, -1)
        if tuple(img.shape) != (c, size, size):
            raise ValueError(f"pattern image must be {size}x{size} or {c}x{size}x{size}, got {tuple(img.shape)}")
        pattern[:, r : r + size, col : col + size] = img
    else:
        values = torch.as_tensor(colour, dtype=torch.float32).flatten()
        if values.numel() == 1:
            values = values.expand(c)
        if values.numel() != c:
            raise ValueError(f"colour needs 1 or {c} values, got {values.numel()}")
        pattern[:, r : r + size, col : col + size] = values.view(c, 1, 1)
    if pattern.min() < 0 or pattern.max() > 1:
        raise ValueError("trigger colours must lie in [0, 1]")
    return Trigger(mask, pattern)
