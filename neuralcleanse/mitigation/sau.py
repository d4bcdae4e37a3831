"""Shared adversarial unlearning (SAU; Wei et al., NeurIPS 2023): a repair that needs no reversed trigger.

A backdoor is a shortcut: a small perturbation that the backdoored model and the model being repaired both
send to the same wrong label is likely to ride it. SAU searches such *shared* adversarial examples on the
user's clean images, by projected gradient ascent in raw pixel space (|δ| ≤ eps per pixel), pushing both
models away from the true label while keeping them in agreement; then fine-tunes the model to answer the
clean images right and not to follow the original model's wrong answer on the shared examples.

Defaults follow BackdoorBench's (eps 0.2 in pixels, 5 steps of 0.2 from the corner +eps, Adam at 1e-4,
cosine decay, the model in evaluation mode, weights 1 for the clean loss and the shared loss, 0.01 for the
adversarial term of the search), with this project's step budget in place of its epochs (a user's few hundred
images would otherwise be passed over a hundred times).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.errors import InputError, refuse_model_argument
from neuralcleanse.mitigation.base import Mitigation
from neuralcleanse.models.classifier import clone_model
from neuralcleanse.models.outputs import logits_view


@dataclass
class SauResult:
    steps: int
    losses: list[float]
    shared_rate: list[float]  # per logged step: share of the batch whose shared example fooled both models alike
    seconds: float
    model: nn.Module = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "losses": self.losses, "shared_rate": self.shared_rate,
                "seconds": round(self.seconds, 1)}


class SharedAdversarialUnlearning(Mitigation):
    """SAU: fine-tune away what shared adversarial examples exploit.

    >>> repaired = SharedAdversarialUnlearning().fit(model, backdoors, clean).apply()
    """

    name = "sau"

    def __init__(self, eps: float = 0.2, pgd_steps: int = 5, pgd_step: float = 0.2, steps: int = 300,
                 batch_size: int = 64, lr: float = 1e-4, shared_weight: float = 1.0, adversarial_weight: float = 0.01,
                 seed: int = 0, device: torch.device | str = "cpu", progress: bool = False) -> None:
        refuse_model_argument("SharedAdversarialUnlearning", eps,
                              "SharedAdversarialUnlearning(...).fit(model, backdoors, clean_data)")
        if not 0 < eps <= 1:
            raise InputError(f"eps must lie in (0, 1], got {eps!r}")
        for name, value in (("pgd_steps", pgd_steps), ("steps", steps), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not lr > 0 or not pgd_step > 0:
            raise InputError("lr and pgd_step must be positive")
        self.eps, self.pgd_steps, self.pgd_step, self.steps = eps, pgd_steps, pgd_step, steps
        self.batch_size, self.lr, self.shared_weight, self.adversarial_weight = batch_size, lr, shared_weight, \
            adversarial_weight
        self.seed, self.device, self.progress = seed, device, progress
        self.sau_: SauResult | None = None

    def fit(self, model: nn.Module, backdoors: Sequence[Backdoor] | None, data: ImageDataset
            ) -> "SharedAdversarialUnlearning":
        self._remember(model, backdoors)
        start = time.perf_counter()
        reference = clone_model(model).to(self.device).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        patched = clone_model(model).to(self.device).requires_grad_(True).eval()
        ref_logits, own_logits = logits_view(reference, data), logits_view(patched, data)
        optimiser = torch.optim.Adam(patched.parameters(), lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=self.steps)
        generator = torch.Generator().manual_seed(self.seed)
        losses, shared = [], []
        for step in tqdm(range(self.steps), desc="sau", disable=None if self.progress else True, leave=False):
            pick = torch.randint(0, len(data), (min(self.batch_size, len(data)),), generator=generator)
            x, y = data.x[pick].to(self.device), data.y[pick].to(self.device)
            adv, both = self._shared_examples(own_logits, ref_logits, x, y)
            with torch.no_grad():
                ref_label = ref_logits(adv).argmax(1)
            clean_loss = F.cross_entropy(own_logits(x), y)
            # Not to follow the original model's wrong answer on the shared examples: −log(1 − p(that label)).
            probs = F.softmax(own_logits(adv), 1).gather(1, ref_label[:, None])[:, 0]
            wrong = (ref_label != y).float()
            shared_loss = (-torch.log((1 - probs).clamp_min(1e-6)) * wrong).sum() / wrong.sum().clamp_min(1)
            loss = clean_loss + self.shared_weight * shared_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if step % 10 == 0 or step == self.steps - 1:
                losses.append(round(float(loss.detach()), 5))
                shared.append(round(float(both), 4))
        self.sau_ = SauResult(self.steps, losses, shared, time.perf_counter() - start, patched.cpu())
        return self

    def _shared_examples(self, model: nn.Module, reference: nn.Module, x: torch.Tensor, y: torch.Tensor
                         ) -> tuple[torch.Tensor, float]:
        """PGD in pixel space from the corner +eps: both models pushed off the true label (the weighted term,
        on the images not yet fooled) and towards each other's answer (the Jensen-Shannon divergence)."""
        delta = torch.full_like(x, self.eps).requires_grad_(True)
        for _ in range(self.pgd_steps):
            adv = (x + delta).clamp(0, 1)
            out, ref = model(adv), reference(adv)
            fooled = (out.argmax(1) != y) & (ref.argmax(1) != y)
            keep = (~fooled).float()
            push = (F.cross_entropy(out, y, reduction="none") + F.cross_entropy(ref, y, reduction="none")) * keep
            loss = self.adversarial_weight * push.mean() - _js(out, ref).mean()
            grad, = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta += self.pgd_step * grad.sign()
                delta.clamp_(-self.eps, self.eps)
        adv = (x + delta.detach()).clamp(0, 1)
        with torch.no_grad():
            out, ref = model(adv).argmax(1), reference(adv).argmax(1)
            both = float(((out == ref) & (out != y)).float().mean())
        return adv, both

    def apply(self) -> nn.Module:
        self._check_fitted()
        return self.sau_.model

    def run_record(self, held_out: ImageDataset, judge: Sequence[Backdoor]) -> tuple[dict, dict, dict]:
        settings = dict(eps=self.eps, pgd_steps=self.pgd_steps, pgd_step=self.pgd_step, steps=self.steps,
                        batch_size=self.batch_size, lr=self.lr, shared_weight=self.shared_weight,
                        adversarial_weight=self.adversarial_weight)
        return settings, {"sau": self.sau_.to_dict()}, {"model": self.apply().to(self.device)}


def _js(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    p, q = F.softmax(a, 1), F.softmax(b, 1)
    m = 0.5 * (p + q)
    return 0.5 * ((p * (p.clamp_min(1e-12) / m.clamp_min(1e-12)).log()).sum(1)
                  + (q * (q.clamp_min(1e-12) / m.clamp_min(1e-12)).log()).sum(1))
