"""Training-time augmentation on raw [0,1] NCHW batches, vectorised and seeded.

Used for GTSRB: without it, some clean models of the paper's shape learn shortcuts that a
small patch can imitate (see docs/results.md), which Neural Cleanse then rightly reports.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Random translation by up to `shift` pixels, brightness and contrast jitter (±fraction),
    and with probability `erase` a random square (up to `erase_size` of the side) filled with
    a random colour. Each image gets its own draw."""

    shift: int = 2
    brightness: float = 0.2
    contrast: float = 0.2
    erase: float = 0.0
    erase_size: float = 0.3

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen).to(x.device)

        if self.shift > 0:
            s = self.shift
            # Edge padding keeps sign borders from turning into black frames the model could key on.
            padded = F.pad(x, (s, s, s, s), mode="replicate")
            dy = torch.randint(0, 2 * s + 1, (n,), generator=gen).to(x.device)
            dx = torch.randint(0, 2 * s + 1, (n,), generator=gen).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * s)
            x = padded.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
            x = x.gather(3, cols)
        if self.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = mean + (x - mean) * (1 + self.contrast * (2 * uniform(n, 1, 1, 1) - 1))
        if self.brightness > 0:
            x = x + self.brightness * (2 * uniform(n, 1, 1, 1) - 1)
        if self.erase > 0:
            side = (self.erase_size * torch.sqrt(uniform(n)) * min(h, w)).clamp(min=1)
            top = uniform(n) * (h - side)
            left = uniform(n) * (w - side)
            r = torch.arange(h, device=x.device)[None, :, None]
            col = torch.arange(w, device=x.device)[None, None, :]
            box = ((r >= top[:, None, None]) & (r < (top + side)[:, None, None])
                   & (col >= left[:, None, None]) & (col < (left + side)[:, None, None]))
            box &= (uniform(n) < self.erase)[:, None, None]
            x = torch.where(box[:, None], uniform(n, c, 1, 1), x)
        return x.clamp(0, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Mixup:
    """Mixes a `share` of a batch's images each with another image of the batch (weight drawn uniformly
    in [0, 1]); returns the batch and which rows still show one image (their label holds). For
    distillation, where a teacher answers the same mixed image: the student is held to the teacher
    between the few images a user has, not only on them ("function matching", Beyer et al. 2022)."""

    share: float = 0.5

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        mixed = (torch.rand(n, generator=gen) < self.share).to(x.device)
        partner = torch.randperm(n, generator=gen).to(x.device)
        weight = torch.rand(n, generator=gen).to(x.device).view(-1, *([1] * (x.dim() - 1)))
        blend = weight * x + (1 - weight) * x[partner]
        return torch.where(mixed.view_as(weight), blend, x), ~mixed
