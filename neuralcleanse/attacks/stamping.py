"""Stamping triggers on random disjoint shares of a dataset: poisoning and unlearning both do it."""
from __future__ import annotations

from typing import Sequence

import torch

from neuralcleanse.data.trigger import AnyTrigger
from neuralcleanse.data.dataset import ImageDataset


def stamp_shares(data: ImageDataset, triggers: Sequence[AnyTrigger], share: float, seed: int = 0,
                 labels: Sequence[int] | None = None, name: str = "stamped",
                 among: torch.Tensor | None = None) -> tuple[ImageDataset, list[torch.Tensor]]:
    """A copy of `data` where a random `share` of the images carries each trigger (disjoint
    subsets, one per trigger). With `labels`, stamped images take that trigger's label (BadNets);
    without, they keep their true labels (unlearning). `among` (indices) limits the draw to those
    images, and `share` is then a share of them. Returns the copy and each subset's indices."""
    if not 0.0 < share < 1.0:
        raise ValueError("the stamped share must lie in (0, 1)")
    if labels is not None and len(labels) != len(triggers):
        raise ValueError("give one label per trigger")
    pool = torch.arange(len(data)) if among is None else torch.as_tensor(among, dtype=torch.long).flatten()
    per_trigger = int(round(share * len(pool)))
    if per_trigger * len(triggers) > len(pool):
        raise ValueError("share × number of triggers exceeds the dataset")
    order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    x, y = data.x.clone(), data.y.clone()
    subsets = []
    for i, trigger in enumerate(triggers):
        idx = order[i * per_trigger : (i + 1) * per_trigger]
        x[idx] = trigger.apply(x[idx])
        if labels is not None:
            y[idx] = int(labels[i])
        subsets.append(idx)
    return ImageDataset(x, y, data.num_classes, f"{data.name}+{name}"), subsets
