"""Neuron pruning: silence the units the reversed trigger excites until it stops working."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import check_fractions
from neuralcleanse.models.classifier import clone_model
from neuralcleanse.mitigation.backdoors import Backdoor, measure
from neuralcleanse.mitigation.profile import ActivationProfile, profile_activations
from neuralcleanse.models.layers import FeatureLayer, prune_units, silence_units


@dataclass
class PruningStep:
    fraction: float
    units: int
    clean_accuracy: float
    reversed_success: float       # worst over the reversed triggers
    attack_success: float | None  # worst over the real triggers, when known

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PruningResult:
    """The curve from nothing pruned to the first step where the reversed trigger's success fell
    under `stop_success` (on, while the real triggers, when known, still work), and the model
    pruned at that first step (or as far as allowed, when never reached: `reached` is False)."""

    layer: FeatureLayer
    curve: list[PruningStep]
    pruned_units: list[int]
    stop_success: float
    reached: bool
    profile: ActivationProfile
    model: nn.Module = field(repr=False)

    @property
    def fraction(self) -> float:
        return len(self.pruned_units) / self.profile.num_units

    @property
    def chosen_step(self) -> PruningStep:
        return next(s for s in self.curve if s.units == len(self.pruned_units))

    def first_below(self, success: float, real: bool = True) -> PruningStep | None:
        """The first step at which attack success (real triggers if measured, else reversed) < `success`."""
        for step in self.curve:
            rate = step.attack_success if real and step.attack_success is not None else step.reversed_success
            if rate < success:
                return step
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer.to_dict(), "units_in_layer": self.profile.num_units,
                "pruned_fraction": self.fraction, "pruned_units": self.pruned_units, "stop_success": self.stop_success,
                "reached": self.reached, "curve": [s.to_dict() for s in self.curve]}


class NeuronPruner:
    """Zeroes the highest-ranked units `step` (a fraction of the layer) at a time, measuring clean
    accuracy and the reversed trigger's success on held-out data after each step, until that
    success falls under `stop_success` or `max_fraction` of the layer is pruned."""

    def __init__(self, step: float = 0.02, stop_success: float = 0.05, max_fraction: float = 1.0,
                 layer: FeatureLayer | str | None = None, batch_size: int = 256,
                 device: torch.device | str = "cpu") -> None:
        check_fractions(step=step, max_fraction=max_fraction)
        check_fractions(include_one=False, stop_success=stop_success)
        self.step = step
        self.stop_success = stop_success
        self.max_fraction = max_fraction
        self.layer = layer
        self.batch_size = batch_size
        self.device = device

    def prune(self, model: nn.Module, backdoors: Sequence[Backdoor], rank_data: ImageDataset,
              eval_data: ImageDataset, real: Sequence[Backdoor] = ()) -> PruningResult:
        """`backdoors`: the reversed triggers (rank and stop on them); `real`: the true triggers,
        if known, only measured. `model` itself is not changed."""
        profile = profile_activations(model, rank_data, backdoors, self.layer, self.batch_size, self.device)
        ranking = profile.ranking
        total = profile.num_units
        work = clone_model(model)
        curve: list[PruningStep] = []
        count, k, chosen = 0, 0, None
        limit = int(self.max_fraction * total)
        while True:
            handle = silence_units(work, profile.layer, ranking[:count]) if count else None
            rev = measure(work, eval_data, backdoors, self.device)
            true = measure(work, eval_data, real, self.device) if real else None
            if handle is not None:
                handle.remove()
            curve.append(PruningStep(count / total, count, rev.clean_accuracy, rev.worst_attack_success,
                                     true.worst_attack_success if true else None))
            if chosen is None and rev.worst_attack_success < self.stop_success:
                chosen = count
            # The curve goes on until the real triggers (when known) fail too, so the report shows
            # where the attack itself dies; the model pruned is the one the reversed trigger chose.
            done_real = true is None or true.worst_attack_success < self.stop_success
            k += 1
            # At least one more unit per step: on a small layer step·units rounds to the same count.
            following = min(limit, max(count + 1, int(round(k * self.step * total))))
            if (chosen is not None and done_real) or count >= limit:
                break
            count = following
        reached = chosen is not None
        count = chosen if reached else count
        pruned = clone_model(model)
        units = ranking[:count]
        if count:
            prune_units(pruned, profile.layer, units)
        return PruningResult(profile.layer, curve, [int(u) for u in units], self.stop_success, reached, profile,
                             pruned)
