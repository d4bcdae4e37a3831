"""Repairs one after another: each fitted on the model the previous one patched, on the same tuning data,
judged together against the model given (e.g. unlearning, then adversarial neuron pruning)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.errors import InputError
from neuralcleanse.mitigation.base import Mitigation, Tuning


class Chain(Mitigation):
    """`Chain(Unlearner(), AdversarialNeuronPruning())`: its name joins the steps' ("unlearn+anp"); its
    settings and findings are the steps', each under its name; its seed and device are the first step's."""

    def __init__(self, *steps: Mitigation) -> None:
        if len(steps) < 2 or not all(isinstance(s, Mitigation) for s in steps):
            raise InputError("a chain takes two or more configured repairs")
        if any(s.name == "filter" for s in steps):
            raise InputError("the input filter leaves the model as it is: it cannot be chained with a repair")
        self.steps = list(steps)
        self.name = "+".join(s.name for s in steps)
        self.seed, self.device = steps[0].seed, steps[0].device

    def fit(self, model: nn.Module, backdoors: Sequence[Backdoor], data: ImageDataset) -> "Chain":
        self._remember(model, backdoors)
        current = model
        for step in self.steps:
            current = step.fit(current, backdoors, data).apply()
        return self

    def fit_tuning(self, model: nn.Module, backdoors: Sequence[Backdoor], tuning: Tuning) -> "Chain":
        self._remember(model, backdoors)
        current = model
        for step in self.steps:
            current = step.fit_tuning(current, backdoors, tuning).apply().to(self.device)
        return self

    def apply(self) -> nn.Module:
        self._check_fitted()
        return self.steps[-1].apply()

    def run_record(self, held_out: ImageDataset, judge: Sequence[Backdoor]) -> tuple[dict, dict, dict]:
        settings, details = {}, {}
        for step in self.steps:
            s, d, _ = step.run_record(held_out, judge)
            settings[step.name] = s
            details.update(d)
        return settings, details, {"model": self.apply().to(self.device)}
