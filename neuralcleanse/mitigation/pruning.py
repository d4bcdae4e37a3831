"""Neuron pruning: silence the units the reversed trigger excites until it stops working."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import InputError, check_fractions, refuse_model_argument
from neuralcleanse.mitigation.base import Mitigation, Tuning
from neuralcleanse.models.classifier import clone_model
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.metrics import measure
from neuralcleanse.mitigation.profile import ActivationProfile, profile_activations
from neuralcleanse.models.layers import FeatureLayer, can_bake, prune_units, resolve_layer, silence_units


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


class NeuronPruner(Mitigation):
    """Zeroes the highest-ranked units `step` (a fraction of the layer) at a time, measuring clean
    accuracy and the reversed trigger's success on held-out data after each step, until that
    success falls under `stop_success` or `max_fraction` of the layer is pruned.

    >>> pruner = NeuronPruner(step=0.02).fit(model, backdoors, clean)
    >>> pruner.apply()               # the pruned copy; pruner.pruning_.curve holds every step
    """

    name = "prune"

    def __init__(self, step: float = 0.02, stop_success: float = 0.05, max_fraction: float = 1.0,
                 layer: FeatureLayer | str | None = None, batch_size: int = 256,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        refuse_model_argument("NeuronPruner", step, "NeuronPruner(...).fit(model, backdoors, clean_data)")
        check_fractions(step=step, max_fraction=max_fraction)
        check_fractions(include_one=False, stop_success=stop_success)
        self.step = step
        self.stop_success = stop_success
        self.max_fraction = max_fraction
        self.layer = layer
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.profile_: ActivationProfile | None = None
        self.pruning_: PruningResult | None = None

    def fit(self, model: nn.Module, backdoors: Sequence[Backdoor], data: ImageDataset, *,
            curve_data: ImageDataset | None = None, real: Sequence[Backdoor] = ()) -> "NeuronPruner":
        """Ranks units on `data` and measures the curve, which picks the model kept, on
        `curve_data` (default: the second half of `data`, the first half ranking). `backdoors`:
        the reversed triggers (rank and stop on them); `real`: the true triggers, if known, only
        measured. `model` itself is not changed."""
        self._remember(model, backdoors)
        if curve_data is None:
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed))
            data, curve_data = data.subset(order[: len(order) // 2]), data.subset(order[len(order) // 2:])
        self.curve_samples_ = len(curve_data)
        self.pruning_ = self._prune(model, backdoors, data, curve_data, real)
        self.profile_ = self.pruning_.profile
        return self

    def apply(self) -> nn.Module:
        self._check_fitted()
        return self.pruning_.model

    def fit_tuning(self, model: nn.Module, backdoors: Sequence[Backdoor], tuning: Tuning) -> "NeuronPruner":
        chosen = resolve_layer(model, self.layer)
        if getattr(getattr(model, "info", None), "arch", None) is None and not can_bake(model, chosen):
            raise InputError(f"pruning layer {chosen.name!r} needs a hook, which only the tool's checkpoints "
                             "keep; for this model prune a dense or convolutional layer (the default does)")
        return self.fit(model, backdoors, tuning.fit, curve_data=tuning.curve, real=tuning.real)

    def run_record(self, held_out: ImageDataset, judge: Sequence[Backdoor]) -> tuple[dict, dict, dict]:
        result = self.pruning_
        settings = dict(step=self.step, stop_success=self.stop_success, max_fraction=self.max_fraction,
                        layer=result.layer.to_dict(), curve_samples=self.curve_samples_)
        details = {"pruning": result.to_dict()}
        if not result.reached:
            details["pruning"]["note"] = (f"the reversed trigger still succeeds above {self.stop_success:.0%} "
                                          f"with {self.max_fraction:.0%} of the layer pruned")
        return settings, details, {"model": self.apply(), "pruning": result}

    def _prune(self, model: nn.Module, backdoors: Sequence[Backdoor], rank_data: ImageDataset,
               eval_data: ImageDataset, real: Sequence[Backdoor]) -> PruningResult:
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
