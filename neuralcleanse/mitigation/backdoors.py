"""What mitigation works from (reversed triggers) and what it is judged by (clean accuracy, attack success)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.attacks.trigger import AnyTrigger, trigger_from_dict
from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import attack_success_rate, clean_accuracy


@dataclass
class Backdoor:
    """A trigger and the label it sends inputs to."""

    target: int
    trigger: AnyTrigger  # real backdoors may be outside the mask-and-pattern form; reversed ones are Triggers


class NothingToMitigate(InputError):
    """The scan flagged no label and none was named."""


def reversed_backdoors(scan: ScanResult, labels: Sequence[int] | None = None) -> list[Backdoor]:
    """The reversed triggers of the flagged labels, or of `labels` when given (to treat a label
    the scan did not flag)."""
    chosen = list(labels) if labels is not None else scan.flagged
    if not chosen:
        raise NothingToMitigate(
            "the scan flagged no label, so there is no reversed trigger to mitigate with and nothing was "
            "changed; name labels explicitly (`labels`) to treat them anyway")
    missing = [label for label in chosen if label not in scan.labels]
    if missing:
        raise InputError(f"label(s) {missing} were not scanned; scanned labels: {scan.labels}")
    return [Backdoor(label, scan.trigger(label)) for label in chosen]


def known_backdoors(metadata: dict[str, Any]) -> list[Backdoor]:
    """The real triggers a model we infected ourselves carries in its checkpoint metadata."""
    info = metadata.get("backdoor") or {}
    return [Backdoor(int(t), trigger_from_dict(d)) for t, d in zip(info.get("targets", []), info.get("triggers", []))]


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
    return Measurement(
        clean_accuracy(model, data, device=device),
        [attack_success_rate(model, data, b.trigger, b.target, device=device) for b in backdoors],
        [b.target for b in backdoors],
    )


def triggered_inputs(data: ImageDataset, backdoors: Sequence[Backdoor]) -> torch.Tensor:
    """Every image whose label is not a backdoor's target, stamped with that backdoor's trigger
    (all backdoors, concatenated): the inputs an attacker would send."""
    parts = [b.trigger.apply(data.x[data.y != b.target]) for b in backdoors]
    return torch.cat(parts) if parts else data.x[:0]


def triggered_sources(data: ImageDataset, backdoors: Sequence[Backdoor]) -> torch.Tensor:
    """For each row of `triggered_inputs(data, backdoors)`, the index of the clean image it was made from."""
    parts = [torch.nonzero(data.y != b.target).flatten() for b in backdoors]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
