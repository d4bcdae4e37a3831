"""BadNets (Gu et al.): poison a share of the training set with a trigger and the target label."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from neuralcleanse.attacks.stamping import stamp_shares
from neuralcleanse.attacks.trigger import Trigger
from neuralcleanse.data.dataset import ImageDataset


@dataclass
class BadNets:
    """One or more (trigger, target) pairs; each poisons `poison_rate` of the training images.

    Several pairs give the paper's variants: several infected labels (different targets) or
    several triggers for one label (same target).
    """

    triggers: list[Trigger]
    targets: list[int]
    poison_rate: float = 0.1
    seed: int = 0
    poisoned_indices: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.triggers) != len(self.targets):
            raise ValueError("give one target per trigger")
        if not 0.0 < self.poison_rate < 1.0:
            raise ValueError("poison_rate must lie in (0, 1)")

    def poison(self, data: ImageDataset) -> ImageDataset:
        """A poisoned copy: disjoint random subsets stamped with each trigger and relabelled."""
        poisoned, self.poisoned_indices = stamp_shares(data, self.triggers, self.poison_rate, self.seed,
                                                       labels=self.targets, name="badnets")
        return poisoned
