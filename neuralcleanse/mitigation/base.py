"""The shape the three mitigations share, in the scikit-learn way.

Hyper-parameters go in the constructor; `fit(model, backdoors, data)` learns from clean data
and returns self, with what it learned in attributes ending in `_`; `apply()` gives the
mitigated model; `evaluate(held_out, real)` measures before and after.

    >>> unlearner = Unlearner(epochs=1).fit(model, backdoors, clean)
    >>> patched = unlearner.apply()
    >>> unlearner.evaluate(held_out).after.worst_attack_success
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.metrics import Measurement, measure


class NotFittedError(RuntimeError):
    """A mitigation was used before `fit`."""


@dataclass
class MitigationResult:
    """Clean accuracy and attack success before and after, on held-out data: with the real
    triggers when given (`attack_trigger` says which), else the reversed ones; `reversed_*`
    always with the reversed ones."""

    attack_trigger: str
    before: Measurement
    after: Measurement
    reversed_before: Measurement
    reversed_after: Measurement

    def to_dict(self) -> dict[str, Any]:
        return {"attack_trigger": self.attack_trigger, "before": self.before.to_dict(),
                "after": self.after.to_dict(),
                "reversed_trigger": {"before": self.reversed_before.to_dict(), "after": self.reversed_after.to_dict()}}


class Mitigation:
    """Base of InputFilter, NeuronPruner and Unlearner."""

    device: torch.device | str = "cpu"
    source_model_: nn.Module | None = None
    backdoors_: list[Backdoor] | None = None

    def fit(self, model: nn.Module, backdoors: Sequence[Backdoor], data: ImageDataset) -> "Mitigation":
        raise NotImplementedError

    def apply(self) -> nn.Module:
        """The mitigated model."""
        raise NotImplementedError

    def _remember(self, model: nn.Module, backdoors: Sequence[Backdoor] | None) -> None:
        self.source_model_, self.backdoors_ = model, list(backdoors or [])

    def _check_fitted(self) -> None:
        if self.source_model_ is None:
            raise NotFittedError(f"call {type(self).__name__}.fit(model, backdoors, data) first")

    def measure_after(self, data: ImageDataset, backdoors: Sequence[Backdoor]) -> Measurement:
        """How the mitigated model does; the filter counts a flagged input as stopped."""
        return measure(self.apply().to(self.device), data, backdoors, self.device)

    def evaluate(self, data: ImageDataset, real: Sequence[Backdoor] = ()) -> MitigationResult:
        """Before and after on `data`, which no fitting step may have seen."""
        self._check_fitted()
        reversed_ = self.backdoors_ or []
        judge = list(real) or reversed_
        before = measure(self.source_model_, data, judge, self.device)
        rev_before = measure(self.source_model_, data, reversed_, self.device) if real else before
        after = self.measure_after(data, judge)
        rev_after = self.measure_after(data, reversed_) if real else after
        return MitigationResult("real" if real else "reversed", before, after, rev_before, rev_after)
