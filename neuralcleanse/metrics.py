"""Clean accuracy and attack success: the one implementation every command reports with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.trigger import AnyTrigger, Backdoor
from neuralcleanse.data.dataset import ImageDataset


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu",
            transform=None) -> torch.Tensor:
    """Predicted labels for raw [0,1] images; `transform` is applied to each batch first."""
    was_training = model.training
    model.eval()
    preds = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        if transform is not None:
            xb = transform(xb)
        preds.append(model(xb).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: nn.Module, data: ImageDataset, batch_size: int = 512,
                   device: str | torch.device = "cpu") -> float:
    preds = predict(model, data.x, batch_size, device)
    return float((preds == data.y).float().mean()) if len(data) else float("nan")


def attack_success_rate(model: nn.Module, data: ImageDataset, trigger: AnyTrigger, target: int,
                        batch_size: int = 512, device: str | torch.device = "cpu",
                        labels: Sequence[int] | None = None) -> float:
    """Share of triggered images, whose true label is not the target, that the model sends to it.

    `labels` limits the images to those true labels: the source labels of a source-specific backdoor
    (its attack success), or the other labels (how often the trigger alone flips them)."""
    keep = data.y != target
    if labels is not None:
        keep &= torch.isin(data.y, torch.as_tensor(list(labels), dtype=data.y.dtype))
    if not bool(keep.any()):
        return float("nan")
    preds = predict(model, data.x[keep], batch_size, device, transform=trigger.apply)
    return float((preds == target).float().mean())


@dataclass
class Measurement:
    """Clean accuracy and, per backdoor (in the order given), its attack success rate."""

    clean_accuracy: float
    attack_success: list[float]
    targets: list[int]

    @property
    def worst_attack_success(self) -> float:
        return max(self.attack_success, default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {"clean_accuracy": self.clean_accuracy,
                "attack_success": [{"target": t, "rate": r} for t, r in zip(self.targets, self.attack_success)]}


def measure(model: nn.Module, data: ImageDataset, backdoors: Sequence[Backdoor],
            device: torch.device | str = "cpu") -> Measurement:
    """Clean accuracy and each backdoor's attack success rate on `data`."""
    return Measurement(
        clean_accuracy(model, data, device=device),
        [attack_success_rate(model, data, b.trigger, b.target, device=device) for b in backdoors],
        [b.target for b in backdoors],
    )
