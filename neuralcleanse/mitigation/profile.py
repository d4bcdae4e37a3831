"""Which units of a layer the reversed trigger excites: the ranking the filter and pruning use."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import InputError
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.mitigation.backdoors import triggered_inputs, triggered_sources
from neuralcleanse.models.layers import FeatureLayer, capture_units, resolve_layer


@dataclass
class ActivationProfile:
    """Mean unit values on clean inputs and on the same inputs carrying the reversed trigger(s);
    `ranking` orders units by how much the trigger raises them, most first; `standardised_ranking`
    by that rise in units of the unit's spread on clean inputs. `activations` (clean, triggered),
    when kept, are what `discriminant` needs; `sources[i]` is the clean image triggered row i was
    made from (what leaving an image out of a fit must also leave out)."""

    layer: FeatureLayer
    clean_mean: torch.Tensor
    triggered_mean: torch.Tensor
    clean_std: torch.Tensor | None = None
    activations: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    sources: torch.Tensor | None = field(default=None, repr=False)

    @property
    def clean_scale(self) -> torch.Tensor:
        """The clean spread, floored: a unit silent on clean inputs would otherwise divide by zero
        (it stays the strongest evidence, just finite)."""
        std = self.clean_std if self.clean_std is not None else torch.ones_like(self.clean_mean)
        return std.clamp_min(1e-3 * float(std.max()) + 1e-8)

    @property
    def standardised_rise(self) -> torch.Tensor:
        """The trigger's mean rise in units of the clean spread (d')."""
        return self.difference / self.clean_scale

    @property
    def standardised_ranking(self) -> torch.Tensor:
        return torch.argsort(self.standardised_rise, descending=True, stable=True)

    @property
    def difference(self) -> torch.Tensor:
        return self.triggered_mean - self.clean_mean

    @property
    def ranking(self) -> torch.Tensor:
        return torch.argsort(self.difference, descending=True, stable=True)

    @property
    def num_units(self) -> int:
        return int(self.clean_mean.numel())

    def top_units(self, fraction: float, standardised: bool = False) -> torch.Tensor:
        """The top `fraction` of ranked units, at least one."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"the fraction of units must lie in (0, 1], got {fraction}")
        ranking = self.standardised_ranking if standardised else self.ranking
        return ranking[: max(1, int(round(fraction * self.num_units)))]

    def discriminant(self, units: torch.Tensor, shrinkage: float) -> torch.Tensor:
        """Fisher's linear discriminant of triggered against clean inputs over `units`: the weights
        Σ⁻¹(μ_triggered − μ_clean), Σ the two sets' mean covariance shrunk by `shrinkage` towards its
        diagonal (the units outnumber what a few hundred images estimate well). Unlike a weight per
        unit, it discounts units that only echo each other."""
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must lie in [0, 1], got {shrinkage}")
        clean, trig = (a[:, units].double() for a in self.kept_activations())
        covs = [torch.cov(a.T).reshape(len(units), len(units)) if len(a) > 1 else torch.zeros(len(units), len(units),
                dtype=torch.float64) for a in (clean, trig)]
        pooled = (covs[0] + covs[1]) / 2
        diag = torch.diag(torch.diag(pooled))
        ridge = 1e-6 * float(torch.diag(pooled).mean()) + 1e-12
        sigma = (1 - shrinkage) * pooled + shrinkage * diag + ridge * torch.eye(len(units), dtype=torch.float64)
        return torch.linalg.solve(sigma, (trig.mean(0) - clean.mean(0))).float()

    def kept_activations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, triggered) activations; ValueError when the profile was made without them."""
        if self.activations is None:
            raise ValueError("the profile was made without its activations (profile_activations(keep=True))")
        return self.activations

    def without_activations(self) -> "ActivationProfile":
        return replace(self, activations=None, sources=None)

    @classmethod
    def of(cls, layer: FeatureLayer | None, clean: torch.Tensor, triggered: torch.Tensor,
           sources: torch.Tensor | None = None) -> "ActivationProfile":
        """The profile of these activations, keeping them."""
        return cls(layer, clean.mean(0), triggered.mean(0), clean.std(0, correction=0), (clean, triggered), sources)

    def leaving_out(self, images: torch.Tensor) -> "ActivationProfile":
        """The profile of the kept activations without these clean images and their stamped copies."""
        clean, trig = self.kept_activations()
        if self.sources is None:
            raise ValueError("the profile does not say which clean image each triggered one was made from")
        keep = torch.ones(len(clean), dtype=torch.bool)
        keep[images] = False
        rows = keep[self.sources]  # triggered rows whose clean image stays
        new_index = torch.cumsum(keep, 0) - 1  # where each kept clean image lands
        return ActivationProfile.of(self.layer, clean[keep], trig[rows], new_index[self.sources[rows]])

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        r = self.ranking[:top]
        return {"layer": self.layer.to_dict(), "units": self.num_units, "top_units": r.tolist(),
                "top_differences": [round(float(v), 6) for v in self.difference[r]]}


@torch.no_grad()
def unit_activations(model: nn.Module, x: torch.Tensor, layer: FeatureLayer, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, U) unit values of `layer` for raw [0,1] images `x`."""
    was_training = model.training
    model.eval()
    out = []
    with capture_units(model, layer) as seen:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size].to(device))
            if len(seen) != 1:
                raise InputError(
                    f"layer {layer.name!r} runs {len(seen)} times in one forward pass; name a layer that runs "
                    "exactly once (`layer`)" if seen else
                    f"layer {layer.name!r} is not used in the model's forward pass; name another with `layer`")
            out.append(seen.pop().float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def profile_activations(model: nn.Module, clean: ImageDataset, backdoors: Sequence[Backdoor],
                        layer: FeatureLayer | str | None = None, batch_size: int = 256,
                        device: torch.device | str = "cpu", keep: bool = False) -> ActivationProfile:
    """Ranks `layer`'s units (default: the input of the last dense layer) by the mean rise the
    backdoors' triggers cause on clean images of other labels. `keep`: the profile holds the
    activations too (for `discriminant`)."""
    if not isinstance(layer, FeatureLayer):
        layer = resolve_layer(model, layer)
    clean_acts = unit_activations(model, clean.x, layer, batch_size, device)
    trig_acts = unit_activations(model, triggered_inputs(clean, backdoors), layer, batch_size, device)
    if keep:
        return ActivationProfile.of(layer, clean_acts, trig_acts, triggered_sources(clean, backdoors))
    return ActivationProfile(layer, clean_acts.mean(0), trig_acts.mean(0), clean_acts.std(0, correction=0))
