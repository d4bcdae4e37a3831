"""BadNets (Gu et al.): poison a share of the training set with a trigger and the target label."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from neuralcleanse.attacks.stamping import stamp_shares
from neuralcleanse.data.trigger import AnyTrigger
from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import InputError


@dataclass
class BadNets:
    """One or more (trigger, target) pairs; each poisons `poison_rate` of the training images.

    Several pairs give the paper's variants: several infected labels (different targets) or
    several triggers for one label (same target).

    `source_labels` makes the backdoor source-specific: only images of those labels are poisoned
    (`poison_rate` is then the share *of the source-label images* each trigger takes), and a
    `cover_rate` share of the other images (default: `poison_rate`) carries the trigger with its
    true label, so that the trigger alone does not flip them. Disjoint subsets throughout.
    """

    triggers: list[AnyTrigger]
    targets: list[int]
    poison_rate: float = 0.1
    seed: int = 0
    source_labels: Sequence[int] | None = None
    cover_rate: float | None = None
    poisoned_indices: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    cover_indices: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.triggers) != len(self.targets):
            raise InputError("give one target per trigger")
        if not self.triggers:
            raise InputError("give at least one trigger")
        if not 0.0 < self.poison_rate < 1.0:
            raise InputError("`poison_rate` must lie in (0, 1)")
        if self.source_labels is not None:
            self.source_labels = sorted({int(v) for v in self.source_labels})
            if not self.source_labels:
                raise InputError("`source_labels` is empty")
            both = sorted(set(self.source_labels) & {int(t) for t in self.targets})
            if both:
                raise InputError(f"`source_labels` include the target label(s) {both}: a source label is one whose "
                                 "images the trigger sends elsewhere")
            if self.cover_rate is None:
                self.cover_rate = self.poison_rate
            if not 0.0 <= self.cover_rate < 1.0:
                raise InputError("`cover_rate` must lie in [0, 1)")
        elif self.cover_rate is not None:
            raise InputError("`cover_rate` only applies to source-specific backdoors (`source_labels`)")
        k = len(self.triggers)
        for name, rate in (("poison_rate", self.poison_rate), ("cover_rate", self.cover_rate or 0.0)):
            if rate * k > 1.0:
                raise InputError(f"`{name}` {rate} × {k} triggers exceeds the dataset: each trigger takes its own "
                                 f"share, so keep `{name}` at most {1 / k:.3g}")

    def poison(self, data: ImageDataset) -> ImageDataset:
        """A poisoned copy: disjoint random subsets stamped with each trigger and relabelled (and, for
        source-specific backdoors, cover subsets of the other labels stamped and left as they were)."""
        if self.source_labels is None:
            try:
                poisoned, self.poisoned_indices = stamp_shares(data, self.triggers, self.poison_rate, self.seed,
                                                               labels=self.targets, name="badnets")
            except ValueError as exc:  # rounding on a tiny dataset
                raise InputError(f"{exc}: lower `poison_rate`") from None
            return poisoned
        is_source = torch.isin(data.y, torch.as_tensor(self.source_labels))
        source, others = torch.nonzero(is_source).flatten(), torch.nonzero(~is_source).flatten()
        if len(source) == 0:
            raise InputError(f"the training set has no image of the source labels {self.source_labels}")
        try:
            poisoned, self.poisoned_indices = stamp_shares(data, self.triggers, self.poison_rate, self.seed,
                                                           labels=self.targets, name="badnets", among=source)
            self.cover_indices = []
            if self.cover_rate and len(others):
                poisoned, self.cover_indices = stamp_shares(poisoned, self.triggers, self.cover_rate, self.seed + 1,
                                                            name="badnets", among=others)
        except ValueError as exc:  # rounding on a tiny dataset
            raise InputError(f"{exc}: lower `poison_rate` or `cover_rate`") from None
        return poisoned
