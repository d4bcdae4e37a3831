"""The shape the mitigations share, in the scikit-learn way, and the one result type they report.

Hyper-parameters go in the constructor; `fit(model, backdoors, data)` learns from clean data
and returns self, with what it learned in attributes ending in `_`; `apply()` gives the
mitigated model; `evaluate(held_out, real)` measures before and after. `mitigate()` (runner.py)
runs a configured method the way the command line does.

    >>> unlearner = Unlearner().fit(model, backdoors, clean)
    >>> patched = unlearner.apply()
    >>> unlearner.evaluate(held_out).after.worst_attack_success
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.metrics import Measurement, measure
from neuralcleanse.mitigation.verify import FILTERED, PRUNED_UNSEEN, Rescan

# Given the model after a round of unlearning, the backdoors a fresh reverse-engineering still finds
# (triggers of treated labels that still stand out; with the flag set, of every treated label), with a
# record of what it saw; none: stop.
Recheck = Callable[[nn.Module, bool], tuple[list[Backdoor], dict[str, Any]]]


class NotFittedError(RuntimeError):
    """A mitigation was used before `fit`."""


@dataclass
class MitigationResult:
    """What a repair did, on held-out data: clean accuracy and attack success before and after, with the
    real triggers when known (`attack_trigger` says which), else the reversed ones; `reversed_before` /
    `reversed_after` always with the reversed ones. For the filter, "after" counts a flagged input as
    stopped: clean accuracy = correct and not flagged, attack success = sent to the target and not flagged.

    `mitigate()` fills in the rest: the settings and what the method found (`details`, as in
    mitigation.json), the patched `model`, the fitted `filter` and its `filter_rates`, the `pruning`
    curve, fine-tuning `baselines`, and the `rescan` of the patched model that `verdict` rests on."""

    method: str
    labels: list[int]
    attack_trigger: str
    before: Measurement
    after: Measurement
    reversed_before: Measurement
    reversed_after: Measurement
    settings: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)
    filter: Any = field(default=None, repr=False)         # the fitted InputFilter
    filter_rates: Any = field(default=None, repr=False)   # its FilterRates on held-out data
    pruning: Any = field(default=None, repr=False)        # NeuronPruner's PruningResult
    baselines: dict[str, Measurement] = field(default_factory=dict)
    wall_time: float = 0.0
    rescan: Rescan | None = None

    @property
    def verdict(self) -> str:
        """What the repair achieved, by a fresh scan of the patched model (not by the reversed
        trigger's figures): "no backdoor found by a rescan", "backdoor may persist", or for the filter,
        which leaves the model as it was, that inputs are filtered."""
        if self.method == "filter":
            return FILTERED
        if self.rescan is None:
            return "not verified (no rescan)"
        if self.method == "prune" and self.rescan.removed:
            return PRUNED_UNSEEN
        return self.rescan.verdict

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "labels": self.labels, "attack_trigger": self.attack_trigger,
            "settings": self.settings,
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "reversed_trigger": {"before": self.reversed_before.to_dict(), "after": self.reversed_after.to_dict()},
            **self.details,
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "verdict": self.verdict,
            **({"rescan": self.rescan.to_dict()} if self.rescan is not None else {}),
            "wall_time_s": round(self.wall_time, 3),
        }


@dataclass
class Tuning:
    """The tuning part of the user's clean data as `mitigate()` hands it to a method: `data` whole, and
    disjoint seeded draws from it: `fit` (rank units, set thresholds) and `curve` (measure the pruning
    curve that picks the model kept); `capped` is the two together. `real`: the true triggers, when
    known, for measuring only; `recheck`: re-finds the treated labels' triggers between rounds."""

    data: ImageDataset
    fit: ImageDataset
    curve: ImageDataset
    capped: ImageDataset
    real: list[Backdoor] = field(default_factory=list)
    recheck: Recheck | None = None


class Mitigation:
    """Base of InputFilter, NeuronPruner and Unlearner. `name` is the method's name on the command line."""

    name: ClassVar[str] = ""
    device: torch.device | str = "cpu"
    seed: int = 0
    source_model_: nn.Module | None = None
    backdoors_: list[Backdoor] | None = None

    def fit(self, model: nn.Module, backdoors: Sequence[Backdoor], data: ImageDataset) -> "Mitigation":
        raise NotImplementedError

    def apply(self) -> nn.Module:
        """The mitigated model."""
        raise NotImplementedError

    def fit_tuning(self, model: nn.Module, backdoors: Sequence[Backdoor], tuning: Tuning) -> "Mitigation":
        """How `mitigate()` fits this method on its tuning split (by default: on all of it)."""
        return self.fit(model, backdoors, tuning.data)

    def run_record(self, held_out: ImageDataset, judge: Sequence[Backdoor]) -> tuple[dict, dict, dict]:
        """After `fit_tuning`: the settings and findings that mitigation.json records for this method, and
        MitigationResult fields to fill (`model`: the model to save, by default `apply()`)."""
        return {}, {}, {"model": self.apply()}

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
        labels = list(dict.fromkeys(b.target for b in reversed_))
        return MitigationResult(self.name, labels, "real" if real else "reversed", before, after, rev_before,
                                rev_after)
