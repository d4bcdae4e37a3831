"""The model's own input preprocessing, kept apart from the data so triggers stay in raw pixels."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects, given images in raw pixel space [0, 1], NCHW, RGB order.

    pixel_scale: 1.0 if the model takes [0,1] inputs, 255.0 if it takes [0,255].
    mean/std:    per-channel normalisation applied after scaling (in the scaled units).
    channel_order: "rgb" or "bgr" (the model's order; data is always RGB).
    """

    pixel_scale: float = 1.0
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        if self.pixel_scale <= 0:
            raise ValueError("pixel_scale must be positive")
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError("channel_order must be 'rgb' or 'bgr'")
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Preprocessing":
        if not d:
            return cls()
        return cls(
            pixel_scale=float(d.get("pixel_scale", 1.0)),
            mean=tuple(float(v) for v in d.get("mean", ())),
            std=tuple(float(v) for v in d.get("std", ())),
            channel_order=str(d.get("channel_order", "rgb")),
        )

    def module(self) -> "PreprocessingLayer":
        return PreprocessingLayer(self)


class PreprocessingLayer(nn.Module):
    """Differentiable preprocessing, so gradients reach the trigger in raw pixel space."""

    def __init__(self, spec: Preprocessing) -> None:
        super().__init__()
        self.scale = float(spec.pixel_scale)
        self.flip = spec.channel_order == "bgr"
        self.normalise = bool(spec.mean)
        mean = torch.tensor(spec.mean or (0.0,), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std or (1.0,), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = x.flip(1)
        if self.scale != 1.0:
            x = x * self.scale
        if self.normalise:
            x = (x - self.mean) / self.std
        return x
