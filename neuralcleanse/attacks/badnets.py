"""BadNets (Gu et al.): poison a share of the training set with a trigger and the target label."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(data), generator=gen)
        per_trigger = int(round(self.poison_rate * len(data)))
        if per_trigger * len(self.triggers) > len(data):
            raise ValueError("poison_rate × number of triggers exceeds the training set")
        x, y = data.x.clone(), data.y.clone()
        self.poisoned_indices = []
        for i, (trigger, target) in enumerate(zip(self.triggers, self.targets)):
            idx = order[i * per_trigger : (i + 1) * per_trigger]
            x[idx] = trigger.apply(x[idx])
            y[idx] = target
            self.poisoned_indices.append(idx)
        return ImageDataset(x, y, data.num_classes, data.name + "+badnets")
