"""Triggers: a mask and a pattern in raw pixel space, and the one function that stamps them; for
measuring where that form stops, triggers outside it (a perturbation added to the whole image); and a
backdoor: a trigger with the label it sends inputs to."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

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


def blended_trigger(input_shape: Sequence[int], alpha: float = 0.15, seed: int = 0) -> Trigger:
    """A blended full-image trigger (Chen et al. 2017): uniform random noise mixed into every pixel at
    strength `alpha`, x' = (1 - alpha)·x + alpha·noise. Still a mask and a pattern, but the mask covers the
    whole image, so its L1 norm (alpha·H·W) is as large as the triggers clean labels naturally need."""
    c, h, w = (int(v) for v in input_shape)
    if not 0.0 < alpha <= 1.0:
        raise ValueError("`alpha` must lie in (0, 1]")
    noise = torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed))
    return Trigger(torch.full((h, w), float(alpha)), noise)


@dataclass
class AdditiveTrigger:
    """A perturbation added to the whole image and clipped to the pixel range: x' = clip(x + delta, 0, 1).

    Not of the mask-and-pattern form Neural Cleanse searches for: it changes every pixel a little instead
    of some pixels a lot. Used by the frequency-domain trigger; it stamps and measures like a `Trigger`
    (`apply`), and has no mask, so detection and unlearning can only meet it through what it does."""

    delta: torch.Tensor

    def __post_init__(self) -> None:
        self.delta = torch.as_tensor(self.delta, dtype=torch.float32)
        if self.delta.ndim != 3:
            raise ValueError("an additive trigger needs a (C,H,W) perturbation")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta.to(x.device)).clamp(0.0, 1.0)

    @property
    def l1(self) -> float:
        return float(self.delta.abs().sum())

    def to_dict(self) -> dict[str, Any]:
        return {"delta": self.delta.clone()}


AnyTrigger = Union[Trigger, AdditiveTrigger]


def trigger_from_dict(d: dict[str, Any]) -> AnyTrigger:
    """The trigger `to_dict` wrote: mask and pattern, or an additive perturbation."""
    if "delta" in d:
        return AdditiveTrigger(torch.as_tensor(np.asarray(d["delta"])))
    return Trigger.from_dict(d)


def dct_basis(h: int, w: int, u: int, v: int) -> torch.Tensor:
    """The (u, v) basis image of the 2-D DCT-II on an h×w grid, peak amplitude 1."""
    rows = torch.cos(torch.pi * (2 * torch.arange(h) + 1) * u / (2 * h))
    cols = torch.cos(torch.pi * (2 * torch.arange(w) + 1) * v / (2 * w))
    return rows[:, None] * cols[None, :]


def frequency_trigger(input_shape: Sequence[int], frequencies: Sequence[tuple[int, int]] = ((14, 14), (27, 27)),
                      amplitude: float = 0.12) -> AdditiveTrigger:
    """A frequency-domain trigger (after FTrojan, Wang et al. 2022): fixed energy added to a few mid- and
    high-frequency DCT coefficients. Adding in the DCT domain is adding their basis images in pixel space,
    so the trigger is an invisible grating over the whole image, `amplitude` at its peak, on every channel."""
    c, h, w = (int(v) for v in input_shape)
    if not frequencies:
        raise ValueError("give at least one (u, v) frequency")
    for u, v in frequencies:
        if not (0 <= u < h and 0 <= v < w) or (u, v) == (0, 0):
            raise ValueError(f"frequency {(u, v)} is not a non-constant DCT coefficient of a {h}x{w} image")
    grating = sum(dct_basis(h, w, int(u), int(v)) for u, v in frequencies)
    grating = grating / grating.abs().max() * float(amplitude)
    return AdditiveTrigger(grating[None].expand(c, h, w).clone())


@dataclass
class Backdoor:
    """A trigger and the label it sends inputs to."""

    target: int
    trigger: AnyTrigger  # real backdoors may be outside the mask-and-pattern form; reversed ones are Triggers


def known_backdoors(metadata: dict[str, Any]) -> list[Backdoor]:
    """The real triggers a model we infected ourselves carries in its checkpoint metadata."""
    info = metadata.get("backdoor") or {}
    return [Backdoor(int(t), trigger_from_dict(d)) for t, d in zip(info.get("targets", []), info.get("triggers", []))]
