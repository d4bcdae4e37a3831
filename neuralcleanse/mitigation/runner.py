"""One mitigation run as the CLI does it: split the data, treat the model, measure before and after."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import DatasetSplits, ImageDataset
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.errors import InputError
from neuralcleanse.models.layers import can_bake, resolve_layer
from neuralcleanse.models.classifier import clone_model
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.metrics import Measurement
from neuralcleanse.mitigation.backdoors import reversed_backdoors
from neuralcleanse.mitigation.input_filter import FilterRates, InputFilter
from neuralcleanse.mitigation.pruning import NeuronPruner, PruningResult
from neuralcleanse.mitigation.unlearning import (ACCURACY_TOLERANCE, DISTILL, LR_CANDIDATES, RECIPES, Unlearner,
                                                 training_lr)
from neuralcleanse.mitigation.verify import FILTERED, PRUNED_UNSEEN, Rescan, rescan

METHODS = ("filter", "prune", "unlearn")
# Rounds of unlearning run whatever the rescan between them finds: on the MNIST population's tune split a
# second round with the label's fresh reversed trigger took the real attack to <= 5% on 13 of 19 models
# against 8 (docs/mitigation.md), where the rescan after round one had stopped finding the label on all.
DEFAULT_MIN_ROUNDS = 3  # since 0.5 (2 in 0.4); docs/results.md, "Session 9"


@dataclass
class MitigationOutcome:
    """What a run found. `before`/`after` measure clean accuracy and attack success on held-out
    data, with the real triggers when known (`attack_trigger` says which), else the reversed ones;
    `reversed_before`/`reversed_after` always with the reversed ones. For the filter, "after"
    counts a flagged input as stopped: clean accuracy = correct and not flagged, attack success
    = sent to the target and not flagged."""

    method: str
    labels: list[int]
    attack_trigger: str
    settings: dict[str, Any]
    before: Measurement
    after: Measurement
    reversed_before: Measurement
    reversed_after: Measurement
    details: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)
    filter: InputFilter | None = field(default=None, repr=False)
    filter_rates: FilterRates | None = field(default=None, repr=False)
    pruning: PruningResult | None = field(default=None, repr=False)
    baselines: dict[str, Measurement] = field(default_factory=dict)
    wall_time: float = 0.0
    rescan: Rescan | None = None

    @property
    def verdict(self) -> str:
        """What the repair achieved, by a fresh scan of the patched model (not by the reversed
        trigger's figures): "no backdoor found by a rescan", "backdoor may persist", or for the filter, which
        leaves the model as it was, that inputs are filtered."""
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


def split_for_mitigation(data: DatasetSplits, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(tune, held_out): the train split tunes (ranks units, sets the threshold, fine-tunes), the
    test split measures. A single set (train is test) is cut in two halves so nothing is measured
    on what tuned it."""
    if data.train is not data.test:
        return data.train, data.test
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))
    half = len(order) // 2
    return data.test.subset(order[:half]), data.test.subset(order[half:])


def mitigate(model: nn.Module, scan: ScanResult, data: DatasetSplits, method: str, *,
             labels: Sequence[int] | None = None, real: Sequence[Backdoor] = (), layer: str | None = None,
             top_fraction: float | None = None, false_positive_rate: float = 0.05, filter_score: str = "lda",
             prune_step: float = 0.02, stop_success: float = 0.05, max_fraction: float = 1.0,
             steps: int = 300, epochs: int | None = None, trigger_share: float = 0.2, data_fraction: float = 1.0,
             lr: float | None = None, jitter: int | None = None, recipe: str = "sized",
             baselines: bool = True, tune_samples: int = 2000, curve_samples: int = 2000, seed: int = 0,
             verify: bool = True, verify_others: int = 10, rounds: int = 3, min_rounds: int | None = None,
             accuracy_tolerance: float = ACCURACY_TOLERANCE, freeze_norm: bool = False, distill: float = DISTILL,
             lr_candidates: Sequence[float] = LR_CANDIDATES, mixup: float = 0.0, roam: float = 0.0,
             adversarial: float = 0.0, refresh: int = 10, adversarial_budget: float = 3.0,
             adversarial_gate: float | None = None, extra_triggers: Sequence[Backdoor] = (),
             device: torch.device | str = "cpu", progress: bool = False) -> MitigationOutcome:
    """Runs `method` with the reversed triggers of the scan's flagged labels (or `labels`).

    `real` (the true triggers, when known) is used only to measure. `top_fraction`, `false_positive_rate`,
    `filter_score`: the filter's (InputFilter `score`; fitted on the whole tuning split, up to
    `tune_samples` + `curve_samples` images). `verify`: scan the patched
    model's treated labels again, beside `verify_others` more, and say no backdoor is found only when
    none of them is flagged any more (neuralcleanse.mitigation.verify). `rounds` (unlearning, sized
    recipe): up to this many rounds, rescanning on the tuning data between them, the first `min_rounds`
    of them (default: 3, or `rounds` if fewer) whatever the rescan finds (Unlearner); `accuracy_tolerance`:
    the clean accuracy its learning-rate search may give up; `freeze_norm`: batch-norm statistics kept;
    `distill`: weight of the term that keeps outputs on clean inputs; `lr_candidates`: the rates its search
    tries; `mixup`: the share of images mixed for the distillation term; `roam`: the share of stamps moved
    anywhere in the image; `adversarial`, `refresh`, `adversarial_budget`, `adversarial_gate`: re-found
    triggers (Unlearner). `extra_triggers`: more reversed triggers for treated labels, used beside the
    scan's (e.g. the same label reversed with other seeds; docs/mitigation.md, session 17). Raises
    NothingToMitigate when the scan flagged nothing and no labels were named: nothing is changed then.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    min_rounds = min(DEFAULT_MIN_ROUNDS, rounds) if min_rounds is None else min_rounds
    start = time.perf_counter()
    backdoors = reversed_backdoors(scan, labels)
    treated = [b.target for b in backdoors]
    stray = sorted({b.target for b in extra_triggers} - set(treated))
    if stray:
        raise InputError(f"extra_triggers name label(s) {stray} that are not treated; treated: {treated}")
    backdoors += list(extra_triggers)
    real = list(real)
    judge = real or backdoors  # what attack success is measured with
    tune, held_out = split_for_mitigation(data, seed)
    model.to(device)
    settings: dict[str, Any] = {"seed": seed, "device": str(device), "tune_samples": len(tune),
                                "held_out_samples": len(held_out), "extra_triggers": len(extra_triggers)}
    # Disjoint draws from the tuning split: units are ranked and the threshold set on `fit_set`; the
    # pruning curve, which picks the model kept, is measured on `curve_set`; before/after on held_out.
    order = torch.randperm(len(tune), generator=torch.Generator().manual_seed(seed))
    # A user's small set is shared in proportion (half each), so the curve that picks the pruned model
    # is never measured on the images that ranked the units.
    n_fit = tune_samples if len(tune) >= tune_samples + curve_samples else max(1, len(tune) * tune_samples // (
        tune_samples + curve_samples))
    fit_set = tune.subset(order[:n_fit])
    curve_set = tune.subset(order[n_fit : n_fit + curve_samples])
    details: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if method == "filter":
        # No pruning curve to measure: the filter ranks and sets its threshold on all of the tuning draw
        # (a 95% quantile of 250 clean scores, what half of a user's 500 gave, is a noisy threshold).
        filter_set = tune.subset(order[: tune_samples + curve_samples])
        mitigation = InputFilter(top_fraction, false_positive_rate, layer, device=device,
                                 score=filter_score).fit(model, backdoors, filter_set)
        rates = mitigation.rates(held_out, judge)
        settings.update(top_fraction=mitigation.top_fraction, false_positive_rate=false_positive_rate,
                        filter_score=filter_score, fit_samples=len(filter_set),
                        layer=mitigation.profile_.layer.to_dict())
        # The model itself is unchanged; its copy carries the filter's settings into the checkpoint.
        patched = clone_model(model)
        extra = {"filter": mitigation, "filter_rates": rates}
        details = {"filter": {**mitigation.to_dict(), **rates.to_dict(),
                              "reversed_false_negative_rate": mitigation.rates(held_out).false_negative_rate}}
    elif method == "prune":
        chosen_layer = resolve_layer(model, layer)
        if getattr(getattr(model, "info", None), "arch", None) is None and not can_bake(model, chosen_layer):
            raise InputError(f"pruning layer {chosen_layer.name!r} needs a hook, which only the tool's checkpoints "
                             "keep; for this model prune a dense or convolutional layer (the default does)")
        mitigation = NeuronPruner(prune_step, stop_success, max_fraction, layer, device=device).fit(
            model, backdoors, fit_set, curve_data=curve_set, real=real)
        result = mitigation.pruning_
        settings.update(step=prune_step, stop_success=stop_success, max_fraction=max_fraction,
                        layer=result.layer.to_dict(), curve_samples=len(curve_set))
        patched, extra = mitigation.apply(), {"pruning": result}
        details = {"pruning": result.to_dict()}
        if not result.reached:
            details["pruning"]["note"] = (f"the reversed trigger still succeeds above {stop_success:.0%} with "
                                          f"{max_fraction:.0%} of the layer pruned")
    else:
        if recipe not in RECIPES:
            raise InputError(f"unknown unlearning recipe {recipe!r}; use one of {', '.join(RECIPES)}")

        def unlearner() -> Unlearner:
            common = dict(trigger_share=trigger_share, seed=seed, device=device, progress=progress)
            if recipe == "paper":
                return Unlearner.paper(model, lr=lr, epochs=epochs or 1, data_fraction=data_fraction, **common)
            return Unlearner(steps, data_fraction=data_fraction, lr=lr, jitter=jitter, epochs=epochs, rounds=rounds,
                             min_rounds=min_rounds, accuracy_tolerance=accuracy_tolerance, freeze_norm=freeze_norm,
                             distill=distill, lr_candidates=lr_candidates, mixup=mixup, roam=roam,
                             adversarial=adversarial, refresh=refresh,
                             adversarial_budget=adversarial_budget, adversarial_gate=adversarial_gate, **common)

        def recheck(patched: torch.nn.Module, every: bool) -> tuple[list, dict]:
            # On the tuning data: the held-out part stays unseen for the measurements and the final rescan.
            again = rescan(patched, scan, treated, tune, device, verify_others)
            return again.still_standing(every), again.to_dict()

        mitigation = unlearner().fit(model, backdoors, tune, recheck=recheck if rounds > 1 else None)
        settings.update(recipe=recipe, steps=steps if recipe == "sized" and epochs is None else None,
                        epochs=mitigation.unlearning_.epochs, jitter=jitter if recipe == "sized" else 0,
                        trigger_share=trigger_share, data_fraction=data_fraction,
                        lr=mitigation.unlearning_.lr, accuracy_tolerance=accuracy_tolerance, freeze_norm=freeze_norm,
                        distill=distill if recipe == "sized" else 0.0,
                        mixup=mixup if recipe == "sized" else 0.0, roam=roam if recipe == "sized" else 0.0,
                        adversarial=adversarial if recipe == "sized" else 0.0, refresh=refresh,
                        adversarial_budget=adversarial_budget, adversarial_gate=adversarial_gate,
                        min_rounds=min_rounds if recipe == "sized" else 1,
                        rounds=1 + sum(bool(r["triggers_added"])
                                                                      for r in mitigation.unlearning_.rounds),
                        lr_source="given" if lr else ("searched" if recipe == "sized" else
                                                      "model's training" if training_lr(model) else "fallback"))
        patched = mitigation.apply().to(device)
        details = {"unlearning": mitigation.unlearning_.to_dict()}
        if baselines:
            extra["baselines"] = {"fine_tune_no_trigger": unlearner().fit(model, None, tune).measure_after(held_out, judge)}
            if real:
                extra["baselines"]["unlearn_real_trigger"] = unlearner().fit(model, real, tune).measure_after(held_out, real)
    result = mitigation.evaluate(held_out, real)
    if verify and method != "filter":
        # On data no tuning step saw, with the scan's own settings and rule.
        extra["rescan"] = rescan(patched, scan, treated, held_out, device, verify_others)
    return MitigationOutcome(method, treated, result.attack_trigger, settings, result.before,
                             result.after, result.reversed_before, result.reversed_after, details, patched,
                             wall_time=time.perf_counter() - start, **extra)
