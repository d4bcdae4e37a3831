"""Triggers re-found on the model while it is being unlearned (adversarial unlearning, after I-BAU).

The reversed trigger is one route to the label, found once on the model as given. On some networks
(global pooling, batch norm) it is not the attacker's route, and unlearning it leaves the real trigger
working (docs/experiments/2026-12-03-unlearning-away-from-the-real-trigger.md). Re-finding a small trigger for the label on the model as it
is being trained, every few steps, and stamping that too, unlearns whichever route is cheapest now: once
the reversed one is gone, the next cheapest, which is where a planted trigger lies.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neuralcleanse.data.trigger import Trigger, apply_trigger
from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.metrics import attack_success_rate
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.detection.reverse_engineer import squash, unsquash


class RefoundTriggers:
    """A mask and pattern per treated label, kept between refreshes (each search starts where the last
    one ended) and moved by `search_steps` Adam steps on a batch at every `refresh`: cross-entropy
    toward the label plus a penalty on the mask's L1 norm above `budget` times the reversed trigger's
    (a hinge: within the budget the search is free to find any route, not only the smallest one).
    The hinge's `weight` holds the budget: at 0.05 the masks grew to four times it on MNIST nets, where
    they drew the label's own features, and unlearning those cost the label's clean accuracy (96% ->
    51% recall on one model; docs/experiments/2026-12-03-adversarial-unlearning.md)."""

    def __init__(self, model: nn.Module, backdoors: Sequence[Backdoor], search_steps: int = 10,
                 budget: float = 3.0, step_size: float = 0.1, weight: float = 1.0) -> None:
        self.model = model
        self.targets = torch.tensor([b.target for b in backdoors])
        masks = torch.stack([b.trigger.mask for b in backdoors]).clamp(1e-3, 1 - 1e-3)
        patterns = torch.stack([b.trigger.pattern for b in backdoors]).clamp(1e-3, 1 - 1e-3)
        self.budgets = budget * masks.sum((1, 2))
        self.mask_vars = unsquash(masks).clone()
        self.pattern_vars = unsquash(patterns).clone()
        self.search_steps, self.step_size, self.weight = search_steps, step_size, weight
        self.searches = 0
        self._squash()

    def _squash(self) -> None:
        # Kept in [0, 1] once a search ends: every training batch stamps them.
        self.masks, self.patterns = squash(self.mask_vars), squash(self.pattern_vars)

    def summary(self) -> dict[str, list | int]:
        """The last triggers' labels, mask L1 norms and budgets, for the record."""
        return {"labels": self.targets.tolist(), "l1_norms": [round(float(v), 2) for v in self.masks.sum((1, 2))],
                "budgets": [round(float(v), 2) for v in self.budgets], "searches": self.searches}

    def refresh(self, x: torch.Tensor) -> None:
        """Moves each label's trigger toward the model's current cheapest route, on batch `x`."""
        device = x.device
        modes = [m.training for m in self.model.modules()]
        self.model.eval()  # the search must not move batch-norm statistics
        try:
            for k, target in enumerate(self.targets.tolist()):
                a = self.mask_vars[k].to(device).requires_grad_(True)
                b = self.pattern_vars[k].to(device).requires_grad_(True)
                opt = torch.optim.Adam([a, b], lr=self.step_size)
                goal = torch.full((len(x),), target, device=device)
                budget = self.budgets[k].to(device)
                for _ in range(self.search_steps):
                    mask = squash(a)
                    out = self.model(apply_trigger(x, mask[None, None], squash(b)[None]))
                    excess = F.relu(mask.sum() - budget)
                    loss = F.cross_entropy(out, goal) + self.weight * excess
                    ga, gb = torch.autograd.grad(loss, [a, b])  # the model's own gradients stay untouched
                    a.grad, b.grad = ga, gb
                    opt.step()
                self.mask_vars[k] = a.detach().cpu()
                self.pattern_vars[k] = b.detach().cpu()
        finally:
            for m, mode in zip(self.model.modules(), modes):
                m.training = mode
        self._squash()
        self.searches += 1


def refound_success(model: nn.Module, backdoors: Sequence[Backdoor], data: ImageDataset, searches: int = 6,
                    search_steps: int = 10, budget: float = 3.0, device: torch.device | str = "cpu") -> float:
    """The worst attack success, on `data`, of triggers re-found on `model` from the reversed ones (as
    during training, within the same budget): how open the label still is to some small trigger, which
    unlearning's rate search scores rather than the one reversed pattern it trained against."""
    x = data.x.to(device)
    worst = 0.0
    for b in backdoors:
        found = RefoundTriggers(model, [b], search_steps, budget)
        others = x[data.y.to(device) != b.target]
        for _ in range(searches):
            found.refresh(others)
        worst = max(worst, attack_success_rate(model, data, Trigger(found.masks[0], found.patterns[0]), b.target,
                                               device=device))
    return worst
