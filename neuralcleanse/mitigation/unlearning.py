"""Unlearning: fine-tune on clean data where a share carries the reversed trigger but keeps its label."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import math

import torch
from torch import nn

from neuralcleanse.attacks.stamping import stamp_shares
from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import InputError, check_fractions, refuse_model_argument
from neuralcleanse.mitigation.base import Mitigation
from neuralcleanse.models.classifier import clone_model
from neuralcleanse.mitigation.backdoors import Backdoor
from neuralcleanse.models.fitting import train_classifier
from neuralcleanse.models.layers import reapply_pruning


FALLBACK_LR = 1e-3


def training_lr(model: nn.Module) -> float | None:
    """The peak learning rate the model was trained with, when its checkpoint records it."""
    info = getattr(model, "info", None)
    lr = ((info.metadata.get("training") or {}).get("lr") if info is not None else None)
    return float(lr) if lr else None


@dataclass
class UnlearningResult:
    samples: int
    stamped: int
    lr: float
    losses: list[float]
    model: nn.Module = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "stamped": self.stamped, "lr": self.lr, "losses": self.losses}


class Unlearner(Mitigation):
    """Fine-tunes a copy of the model for `epochs` on `data_fraction` of the given clean set, with
    the triggers stamped on `trigger_share` of it (split evenly between triggers) and true labels
    kept, so the model learns that the trigger means nothing (the paper: 10% of the training
    data, 20% stamped, one epoch; the learning rate is ours, see docs/mitigation.md). With no
    backdoors it is plain fine-tuning, the paper's baseline.

    >>> patched = Unlearner().fit(model, backdoors, clean).apply()
    """

    def __init__(self, epochs: int = 1, trigger_share: float = 0.2, data_fraction: float = 0.1,
                 lr: float | None = None, batch_size: int = 64, seed: int = 0, device: torch.device | str = "cpu",
                 progress: bool = False) -> None:
        refuse_model_argument("Unlearner", epochs, "Unlearner(...).fit(model, backdoors, clean_data)")
        if epochs < 1:
            raise InputError(f"epochs must be at least 1, got {epochs}")
        check_fractions(trigger_share=trigger_share, data_fraction=data_fraction)
        if lr is not None and lr <= 0:
            raise InputError(f"lr must be positive, got {lr}")
        self.epochs = epochs
        self.trigger_share = trigger_share
        self.data_fraction = data_fraction
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.progress = progress
        self.unlearning_: UnlearningResult | None = None

    def fit(self, model: nn.Module, backdoors: Sequence[Backdoor] | None, data: ImageDataset) -> "Unlearner":
        """Fine-tunes a copy of `model`; `backdoors=None` fine-tunes with no trigger (the baseline)."""
        self._remember(model, backdoors)
        self.unlearning_ = self._unlearn(model, backdoors, data)
        return self

    def apply(self) -> nn.Module:
        self._check_fitted()
        return self.unlearning_.model

    def _unlearn(self, model: nn.Module, backdoors: Sequence[Backdoor] | None, train: ImageDataset) -> UnlearningResult:
        subset = train if self.data_fraction >= 1.0 else train.random_sample(
            max(1, int(round(self.data_fraction * len(train)))), seed=self.seed)
        stamped = 0
        if backdoors:
            share = min(self.trigger_share, 0.999) / len(backdoors)
            subset, parts = stamp_shares(subset, [b.trigger for b in backdoors], share, seed=self.seed + 1,
                                         name="unlearn")
            stamped = sum(len(p) for p in parts)
        lr = self.lr or training_lr(model) or FALLBACK_LR
        patched = clone_model(model)
        losses = train_classifier(patched, subset, epochs=self.epochs, batch_size=self.batch_size, lr=lr,
                                  seed=self.seed, device=self.device, progress=self.progress, desc="unlearn")
        if not all(math.isfinite(v) for v in losses):
            raise InputError(f"unlearning diverged (loss {losses[-1]}) at lr {lr:g}; give a lower `lr`")
        # A pruned model's zeroed weights may have moved: zero them again, so the model measured
        # is the model saved (whose checkpoint re-applies its pruning on load).
        reapply_pruning(patched, getattr(getattr(patched, "info", None), "metadata", {}).get("pruning", []))
        patched.cpu()
        return UnlearningResult(len(subset), stamped, lr, losses, patched)
