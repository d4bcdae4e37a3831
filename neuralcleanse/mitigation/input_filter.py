"""Input filter: flag inputs whose top trigger-excited units fire unusually hard."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import InputError, check_fractions, refuse_model_argument
from neuralcleanse.mitigation.base import Mitigation, NotFittedError, Tuning
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.metrics import Measurement
from neuralcleanse.mitigation.backdoors import triggered_inputs
from neuralcleanse.mitigation.profile import ActivationProfile, profile_activations, unit_activations
from neuralcleanse.models.classifier import clone_model
from neuralcleanse.models.layers import FeatureLayer, capture_units


SCORES = ("lda", "weighted", "z", "mean")
# The share of the layer's units scored, by score: the published 1% for the published score and 0.5's
# z score; 10% for 0.6's weighted one; every unit the trigger raises for the discriminant (0.7), up to
# LDA_MAX_UNITS. Each chosen on the MNIST population's tune split (docs/mitigation.md).
DEFAULT_TOP_FRACTION = {"lda": 1.0, "weighted": 0.10, "z": 0.01, "mean": 0.01}
LDA_MAX_UNITS = 1024  # the covariance's size: 1,024² entries; the units after the top 1,024 by d' add little
LDA_SHRINKAGE = 0.2   # chosen on the MNIST tune split among 0.05, 0.1, 0.2 (docs/mitigation.md)
# Folds of the cross-fitted threshold (every score but the published one): 10 gave held-out false-positive
# rates nearest the setting on the MNIST tune split, at 250 and 1,000 images (docs/mitigation.md).
CALIBRATION_FOLDS = 10


def unit_score(acts: torch.Tensor, units: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per input, the weighted mean z-value of the chosen units (equal weights when none are given);
    offset 0 and scale 1 give their plain mean activation, the published score. Weights may be
    negative (a discriminant's): they are normalised by their absolute sum."""
    z = (acts[:, units] - offset) / scale
    return z.mean(1) if weight is None else (z * weight).sum(1) / weight.abs().sum().clamp_min(1e-12)


def scored_units(profile: ActivationProfile, score: str, top_fraction: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What `unit_score` needs for a filter score (SCORES): the units, their offsets, scales and
    weights (None: equal). "lda" needs a profile that kept its activations."""
    units = profile.top_units(top_fraction, standardised=score != "mean")
    if score == "mean":
        return units, torch.zeros(len(units)), torch.ones(len(units)), None
    if score == "z":
        return units, profile.clean_mean[units], profile.clean_scale[units], None
    rise = profile.standardised_rise[units]
    units = units[rise > 0] if bool((rise > 0).any()) else units[:1]  # a unit the trigger lowers is no evidence
    if score == "lda":
        units = units[:LDA_MAX_UNITS]
        return units, profile.clean_mean[units], torch.ones(len(units)), profile.discriminant(units, LDA_SHRINKAGE)
    return units, profile.clean_mean[units], profile.clean_scale[units], profile.standardised_rise[units].clamp_min(1e-6)


def calibration_scores(profile: ActivationProfile, score: str, top_fraction: float,
                       chosen: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
                       folds: int = CALIBRATION_FOLDS) -> torch.Tensor:
    """The scores of the profile's clean images that the threshold is set on. The published score
    ("mean") takes them from the fitted filter (`chosen`), as published. Every other score takes each
    image's from a filter fitted without it and its stamped copies (`folds`-fold): a filter fitted on an
    image scores it lower than a new one, so the in-sample quantile flags more new clean inputs than
    asked (on 250 images, 8.9% held-out false positives for a 5% setting with the discriminant)."""
    clean = profile.kept_activations()[0]
    folds = min(folds, len(clean) // 2)
    if score == "mean" or folds < 2:
        return unit_score(clean, *chosen)
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(0))
    out = torch.empty(len(clean))
    for fold in range(folds):
        held = order[fold::folds]
        out[held] = unit_score(clean[held], *scored_units(profile.leaving_out(held), score, top_fraction))
    return out


@dataclass
class FilterRates:
    """Measured on inputs the filter was not fitted on."""

    false_positive_rate: float
    false_negative_rate: float
    clean_scores: torch.Tensor
    triggered_scores: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {"false_positive_rate": self.false_positive_rate, "false_negative_rate": self.false_negative_rate,
                "clean_inputs": int(self.clean_scores.numel()), "triggered_inputs": int(self.triggered_scores.numel())}


class InputFilter(Mitigation):
    """Scores an input by the activation of the `top_fraction` of units the reversed trigger excites
    most, and flags it when the score exceeds a threshold set on clean data for the chosen
    `false_positive_rate` (the paper: mean activation of the top 1% of the second-to-last layer, 5% FPR).

    `score`: "mean" is the published score. "z" (the default in 0.5) ranks units by the trigger's rise
    in units of their spread on clean inputs (d') and scores the mean of their z-values: a unit that
    varies a lot on clean images is weak evidence however much the trigger moves it. "weighted" (the
    default in 0.6) weighs each unit's z-value by its d', a linear discriminant for independent
    units, over the top 10%. "lda" (the default since 0.7) is Fisher's discriminant over every unit
    the trigger raises (at most 1,024): it also accounts for units that move together, so a crowd
    of correlated weak units does not outvote a few strong ones (`top_fraction` None:
    DEFAULT_TOP_FRACTION of the score).

    >>> filt = InputFilter().fit(model, backdoors, clean)
    >>> guarded = filt.apply()       # a FilteredClassifier: (logits, flagged) per input
    >>> filt.flag(x)                 # bool per input
    >>> filt.rates(held_out).false_negative_rate
    """

    name = "filter"

    def __init__(self, top_fraction: float | None = None, false_positive_rate: float = 0.05,
                 layer: FeatureLayer | str | None = None, batch_size: int = 256,
                 device: torch.device | str = "cpu", score: str = "lda", seed: int = 0) -> None:
        refuse_model_argument("InputFilter", top_fraction, "InputFilter(...).fit(model, backdoors, clean_data)")
        if score not in SCORES:
            raise InputError(f"unknown filter score {score!r}; use one of {', '.join(SCORES)}")
        top_fraction = DEFAULT_TOP_FRACTION[score] if top_fraction is None else top_fraction
        check_fractions(top_fraction=top_fraction)
        check_fractions(include_one=False, false_positive_rate=false_positive_rate)
        self.top_fraction = top_fraction
        self.false_positive_rate = false_positive_rate
        self.layer = layer
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.score_kind = score
        self.offset_: torch.Tensor | None = None
        self.scale_: torch.Tensor | None = None
        self.weight_: torch.Tensor | None = None
        self.profile_: ActivationProfile | None = None
        self.units_: torch.Tensor | None = None
        self.threshold_: float | None = None

    def fit(self, model: nn.Module, backdoors: Sequence[Backdoor], data: ImageDataset) -> "InputFilter":
        self._remember(model, backdoors)
        self.fit_samples_ = len(data)
        profile = profile_activations(model, data, backdoors, self.layer, self.batch_size, self.device, keep=True)
        chosen = scored_units(profile, self.score_kind, self.top_fraction)
        self.units_, self.offset_, self.scale_, self.weight_ = chosen
        scores = calibration_scores(profile, self.score_kind, self.top_fraction, chosen)
        self.profile_ = profile.without_activations()  # activations are only needed for the fit
        # Flag strictly above the (1 - FPR) quantile of clean scores.
        self.threshold_ = float(torch.quantile(scores.double(), 1.0 - self.false_positive_rate))
        return self

    def fit_tuning(self, model: nn.Module, backdoors: Sequence[Backdoor], tuning: Tuning) -> "InputFilter":
        # No pruning curve to measure: units are ranked and the threshold set on the whole tuning draw (a 95%
        # quantile of 250 clean scores, what half of a user's 500 gives, is a noisy threshold).
        return self.fit(model, backdoors, tuning.capped)

    def run_record(self, held_out: ImageDataset, judge: Sequence[Backdoor]) -> tuple[dict, dict, dict]:
        rates = self.rates(held_out, judge)
        settings = dict(top_fraction=self.top_fraction, false_positive_rate=self.false_positive_rate,
                        filter_score=self.score_kind, fit_samples=self.fit_samples_,
                        layer=self.profile_.layer.to_dict())
        details = {"filter": {**self.to_dict(), **rates.to_dict(),
                              "reversed_false_negative_rate": self.rates(held_out).false_negative_rate}}
        # The model itself is unchanged; its copy carries the filter's settings into the checkpoint.
        return settings, details, {"model": clone_model(self.source_model_), "filter": self, "filter_rates": rates}

    def _fitted(self) -> tuple[FeatureLayer, torch.Tensor, float]:
        if self.profile_ is None or self.units_ is None or self.threshold_ is None:
            raise NotFittedError("call InputFilter.fit(model, backdoors, data) first")
        return self.profile_.layer, self.units_, self.threshold_

    def _scores(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        layer = self.profile_.layer if self.profile_ else None
        acts = unit_activations(model, x, layer, self.batch_size, self.device)
        return unit_score(acts, self.units_, self.offset_, self.scale_, self.weight_)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        self._fitted()
        return self._scores(self.source_model_, x)

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x) > self._fitted()[2]

    def rates(self, clean: ImageDataset, backdoors: Sequence[Backdoor] | None = None) -> FilterRates:
        """FPR on `clean` (held out from fit) and FNR on the same images carrying the triggers
        (the fitted reversed ones unless others, e.g. the real ones, are given)."""
        threshold = self._fitted()[2]
        clean_scores = self.score(clean.x)
        trig_scores = self.score(triggered_inputs(clean, self.backdoors_ if backdoors is None else backdoors))
        return FilterRates(float((clean_scores > threshold).float().mean()),
                           float((trig_scores <= threshold).float().mean()), clean_scores, trig_scores)

    def apply(self, model: nn.Module | None = None) -> "FilteredClassifier":
        """The fitted model (or `model`, e.g. the same weights elsewhere) behind the filter."""
        layer, units, threshold = self._fitted()
        return FilteredClassifier(self.source_model_ if model is None else model, layer, units, threshold,
                                  self.offset_, self.scale_, self.weight_)

    def measure_after(self, data: ImageDataset, backdoors: Sequence[Backdoor]) -> Measurement:
        """A flagged input counts as stopped: clean accuracy = correct and not flagged, attack
        success = sent to the target and not flagged. The guard answers -1 for a flagged input,
        which matches no label, so one pass gives both."""
        guarded = self.apply()
        ok = guarded.predict(data.x, device=self.device) == data.y
        rates = []
        for b in backdoors:
            x = triggered_inputs(data, [b])
            hit = guarded.predict(x, device=self.device) == b.target
            rates.append(float(hit.float().mean()) if len(x) else float("nan"))
        return Measurement(float(ok.float().mean()), rates, [b.target for b in backdoors])

    def to_dict(self) -> dict[str, Any]:
        layer, units, threshold = self._fitted()
        return {"layer": layer.to_dict(), "units": [int(u) for u in units], "threshold": threshold,
                "top_fraction": self.top_fraction, "false_positive_rate": self.false_positive_rate,
                "score": self.score_kind,
                **({"offset": self.offset_.tolist(), "scale": self.scale_.tolist()} if self.score_kind != "mean" else {}),
                **({"weight": self.weight_.tolist()} if self.weight_ is not None else {})}


class FilteredClassifier(nn.Module):
    """The model plus the filter, for inference code: `forward` returns (logits, flagged);
    `predict` returns labels with `abstain` (default -1) for flagged inputs."""

    def __init__(self, model: nn.Module, layer: FeatureLayer, units: torch.Tensor | list[int], threshold: float,
                 offset: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.register_buffer("units", torch.as_tensor(units, dtype=torch.long))
        n = len(self.units)
        self.register_buffer("offset", torch.zeros(n) if offset is None else torch.as_tensor(offset).float())
        self.register_buffer("scale", torch.ones(n) if scale is None else torch.as_tensor(scale).float())
        self.register_buffer("weight", torch.ones(n) if weight is None else torch.as_tensor(weight).float())
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with capture_units(self.model, self.layer) as seen:
            logits = self.model(x)
        score = unit_score(seen[-1], self.units, self.offset, self.scale, self.weight)
        return logits, score > self.threshold

    @torch.no_grad()
    def predict(self, x: torch.Tensor, abstain: int = -1, batch_size: int = 512,
                device: torch.device | str | None = None) -> torch.Tensor:
        """Labels for raw [0,1] images, `abstain` where flagged; one forward pass per batch."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            logits, flagged = self(xb.to(device) if device is not None else xb)
            out.append(torch.where(flagged, torch.full_like(flagged, abstain, dtype=torch.long),
                                   logits.argmax(1)).cpu())
        self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    @classmethod
    def from_dict(cls, model: nn.Module, d: dict[str, Any]) -> "FilteredClassifier":
        # Filters saved before 0.5 carry no offset or scale (plain means), before 0.6 no weight (equal).
        return cls(model, FeatureLayer.from_dict(d["layer"]), d["units"], d["threshold"],
                   d.get("offset"), d.get("scale"), d.get("weight"))
