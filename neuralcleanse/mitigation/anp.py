"""Adversarial neuron pruning (ANP; Wu and Wang, NeurIPS 2021): a repair that needs no reversed trigger.

Backdoor neurons are the ones a small adversarial perturbation of the neurons turns into a route to the
target. ANP learns a mask m ∈ [0, 1] per neuron (models/neurons.py: batch-norm channels, or the hidden
convolutional and dense channels of a network without batch-norm) so that the network stays right on the
user's clean images both as it is and under the worst neuron noise within `eps`:

    min_m  alpha · CE(m ⊙ w) + (1 − alpha) · max_{|δ|, |ξ| ≤ eps} CE((m + δ) ⊙ w, (1 + ξ) ⊙ b)

by one sign step of the noise from a uniform start, then one SGD step of the mask (momentum 0.9), clipped to
[0, 1]. Neurons whose mask stays small carry what the noise exploits; they are pruned (their weight zeroed,
their bias kept, as the reference code prunes), those at or below a threshold on the mask.

The reference code sweeps the threshold and leaves the choice to whoever knows the real trigger (BackdoorBench
picks the threshold by the real attack's success). Here it is chosen with clean images only: on a fifth of
the tuning data held back from the mask's training, the largest threshold (pruning the most) whose clean
accuracy stays within `accuracy_tolerance` of the model's, counted in images. Defaults follow the paper and
its code (eps 0.4, one noise step, alpha 0.2, mask rate 0.2, batches of 128), and so is the mode: the mask is
learned in training mode (each batch-norm layer normalising with the batch's statistics, so the next one undoes
a channel's scaling as in training; in evaluation mode the same noise breaks a batch-norm network outright),
the running statistics put back afterwards, and the thresholds are judged in evaluation mode.
"""
from __future__ import annotations

import math
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
from neuralcleanse.metrics import clean_accuracy
from neuralcleanse.mitigation.base import Mitigation
from neuralcleanse.models.classifier import clone_model
from neuralcleanse.models.neurons import Neurons, batch_statistics
from neuralcleanse.models.outputs import logits_view


@dataclass
class AnpResult:
    """The learned mask, the threshold sweep on held-back clean images, and what was pruned."""

    layers: list[str]
    kind: str
    masks: dict[str, list[float]]
    sweep: list[dict[str, float]]
    threshold: float | None  # None: every threshold cost too much accuracy, nothing was pruned
    pruned: dict[str, list[int]]
    base_accuracy: float
    scored_on: int
    iterations: int
    seconds: float
    model: nn.Module = field(repr=False)

    @property
    def pruned_count(self) -> int:
        return sum(len(v) for v in self.pruned.values())

    def to_dict(self) -> dict[str, Any]:
        total = sum(len(v) for v in self.masks.values())
        return {"layers": self.layers, "neurons": self.kind, "neuron_count": total, "threshold": self.threshold,
                "pruned_count": self.pruned_count, "pruned_fraction": self.pruned_count / max(total, 1),
                "pruned": self.pruned, "sweep": self.sweep, "base_accuracy": self.base_accuracy,
                "scored_on": self.scored_on, "iterations": self.iterations, "seconds": round(self.seconds, 1)}


class AdversarialNeuronPruning(Mitigation):
    """ANP: prune the neurons that adversarial neuron noise turns into a backdoor's route.

    >>> repaired = AdversarialNeuronPruning().fit(model, backdoors, clean).apply()

    `backdoors` are not used to repair (ANP needs no trigger); they are kept to measure with, as for the
    other methods.
    """

    name = "anp"

    def __init__(self, eps: float = 0.4, steps: int = 1, alpha: float = 0.2, mask_lr: float = 0.2,
                 iterations: int = 2000, batch_size: int = 128, accuracy_tolerance: float = 0.02,
                 thresholds: Sequence[float] = tuple(round(0.05 * i, 2) for i in range(19)),
                 seed: int = 0, device: torch.device | str = "cpu", progress: bool = False) -> None:
        refuse_model_argument("AdversarialNeuronPruning", eps,
                              "AdversarialNeuronPruning(...).fit(model, backdoors, clean_data)")
        if not 0 < eps < 1:
            raise InputError(f"eps must lie in (0, 1), got {eps!r}")
        for name, value in (("steps", steps), ("iterations", iterations), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not 0 <= alpha <= 1:
            raise InputError(f"alpha must lie in [0, 1], got {alpha!r}")
        if not mask_lr > 0:
            raise InputError(f"mask_lr must be positive, got {mask_lr!r}")
        if not 0 <= accuracy_tolerance < 1:
            raise InputError(f"accuracy_tolerance must lie in [0, 1), got {accuracy_tolerance!r}")
        if not thresholds or not all(0 <= t < 1 for t in thresholds):
            raise InputError(f"thresholds must lie in [0, 1), got {thresholds!r}")
        self.eps, self.steps, self.alpha, self.mask_lr = eps, steps, alpha, mask_lr
        self.iterations, self.batch_size, self.accuracy_tolerance = iterations, batch_size, accuracy_tolerance
        self.thresholds = tuple(sorted(float(t) for t in thresholds))
        self.seed, self.device, self.progress = seed, device, progress
        self.anp_: AnpResult | None = None

    def fit(self, model: nn.Module, backdoors: Sequence[Backdoor] | None, data: ImageDataset) -> "AdversarialNeuronPruning":
        self._remember(model, backdoors)
        start = time.perf_counter()
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed + 17))
        cut = max(1, len(data) // 5)
        held, train = data.subset(order[:cut]), data.subset(order[cut:])
        work = clone_model(model).to(self.device).eval()
        for p in work.parameters():
            p.requires_grad_(False)
        try:
            neurons = Neurons.of(work, self.device)
        except InputError as exc:
            raise InputError(f"ANP cannot reach this model's neurons: {exc}") from None
        if not neurons.layers:
            raise InputError("ANP needs hidden neurons to prune, and this network has none")
        # Cross-entropy on logits: through a final softmax it would barely move (the hooks sit on `work`'s
        # modules, which the view shares).
        with batch_statistics(work):
            self._learn_mask(logits_view(work, train), neurons, train)
        base = clean_accuracy(model, held, device=self.device)
        sweep, chosen = self._choose(work, neurons, held, base)
        pruned = {n: ([] if chosen is None else [int(i) for i in torch.nonzero(neurons.mask[n] <= chosen).flatten()])
                  for n in neurons.layers}
        patched = clone_model(model)
        prune_neurons(patched, pruned)
        self.anp_ = AnpResult(neurons.layers, neurons.kind, {n: [round(float(v), 4) for v in m.cpu()]
                                                             for n, m in neurons.mask.items()},
                              sweep, chosen, pruned, base, len(held), self.iterations, time.perf_counter() - start,
                              patched.cpu())
        return self

    def apply(self) -> nn.Module:
        self._check_fitted()
        return self.anp_.model

    def run_record(self, held_out: ImageDataset, judge: Sequence[Backdoor]) -> tuple[dict, dict, dict]:
        settings = dict(eps=self.eps, steps=self.steps, alpha=self.alpha, mask_lr=self.mask_lr,
                        iterations=self.iterations, batch_size=self.batch_size,
                        accuracy_tolerance=self.accuracy_tolerance, threshold=self.anp_.threshold)
        return settings, {"anp": self.anp_.to_dict()}, {"model": self.apply().to(self.device)}

    def _learn_mask(self, model: nn.Module, neurons: Neurons, data: ImageDataset) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        masks = list(neurons.mask.values())
        for m in masks:
            m.requires_grad_(True)
        optimiser = torch.optim.SGD(masks, lr=self.mask_lr, momentum=0.9)
        noise = neurons.noise_tensors()
        x_all, y_all = data.x, data.y
        for _ in tqdm(range(self.iterations), desc="anp", disable=None if self.progress else True, leave=False):
            pick = torch.randint(0, len(data), (min(self.batch_size, len(data)),), generator=generator)
            x, y = x_all[pick].to(self.device), y_all[pick].to(self.device)
            neurons.draw_noise(self.eps, generator)
            for _ in range(self.steps):
                for t in noise:
                    t.requires_grad_(True)
                with neurons.applied(model):
                    grads = torch.autograd.grad(F.cross_entropy(model(x), y), noise)
                with torch.no_grad():
                    for t, g in zip(noise, grads):
                        t.add_(self.eps / self.steps * g.sign())
                for t in noise:
                    t.requires_grad_(False)
            with neurons.applied(model, noise=True):
                robust = F.cross_entropy(model(x), y)
            with neurons.applied(model, noise=False):
                natural = F.cross_entropy(model(x), y)
            loss = self.alpha * natural + (1 - self.alpha) * robust
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                for m in masks:
                    m.clamp_(0, 1)
            if not math.isfinite(float(loss.detach())):
                raise InputError("ANP's mask training diverged; give a lower `mask_lr`")
        for m in masks:
            m.requires_grad_(False)
        neurons.clear_noise()

    def _choose(self, model: nn.Module, neurons: Neurons, held: ImageDataset, base: float
                ) -> tuple[list[dict[str, float]], float | None]:
        """The threshold sweep on held-back images: the largest threshold keeping clean accuracy within the
        tolerance (compared in images); None when none does."""
        learned = {n: m.clone() for n, m in neurons.mask.items()}
        allowed = math.floor(self.accuracy_tolerance * len(held) + 1e-6)
        sweep, chosen = [], None
        for threshold in self.thresholds:
            for n, m in learned.items():
                neurons.mask[n] = (m > threshold).float()
            with neurons.applied(model, noise=False):
                acc = clean_accuracy(model, held, device=self.device)
            count = sum(int((m <= threshold).sum()) for m in learned.values())
            sweep.append({"threshold": threshold, "pruned": count, "clean_accuracy": acc})
            if round((base - acc) * len(held)) <= allowed:
                chosen = threshold
        neurons.mask.update(learned)
        return sweep, chosen


def prune_neurons(model: nn.Module, pruned: dict[str, list[int]]) -> None:
    """Zeroes the weights of the given neurons (layer name → indices), their biases kept: for a batch-norm
    channel its scale, for a convolutional or dense channel its row of weights. The change lives in the
    weights, so it travels with any export."""
    modules = dict(getattr(model, "net", model).named_modules())
    with torch.no_grad():
        for name, index in pruned.items():
            if index:
                weight = modules[name].weight
                weight[torch.as_tensor(index, dtype=torch.long, device=weight.device)] = 0
