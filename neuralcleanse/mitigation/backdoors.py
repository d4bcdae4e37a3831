"""What mitigation works from: the reversed triggers of a scan, and the inputs they stamp."""
from __future__ import annotations

from typing import Sequence

import torch

from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.errors import InputError


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


def triggered_inputs(data: ImageDataset, backdoors: Sequence[Backdoor]) -> torch.Tensor:
    """Every image whose label is not a backdoor's target, stamped with that backdoor's trigger
    (all backdoors, concatenated): the inputs an attacker would send."""
    parts = [b.trigger.apply(data.x[data.y != b.target]) for b in backdoors]
    return torch.cat(parts) if parts else data.x[:0]


def triggered_sources(data: ImageDataset, backdoors: Sequence[Backdoor]) -> torch.Tensor:
    """For each row of `triggered_inputs(data, backdoors)`, the index of the clean image it was made from."""
    parts = [torch.nonzero(data.y != b.target).flatten() for b in backdoors]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
