"""The neuron-noise test (after BAN, Xu et al., NeurIPS 2024, and ANP, Wu and Wang, NeurIPS 2021): a
backdoored network collapses onto its target when its neurons are adversarially perturbed.

Every neuron's weight and bias are scaled by 1 + δ and 1 + ξ, with |δ|, |ξ| ≤ eps at the start; the noise is
then pushed `steps` times, by eps/steps along the sign of its gradient, to raise the cross-entropy of a
batch of the user's clean images (untargeted: it only tries to make the network wrong). On a clean network
the wrong answers this causes spread over several labels; on a backdoored one the backdoor's neurons are a
ready route, and they pile onto its target. Which neurons: models/neurons.py (batch-norm channels, as the
papers and their code choose; the hidden convolutional and dense channels of a network without batch-norm).

The statistic of a label is how many of the clean images of other labels the noisy network sends to it
(over `draws` independent noises, each measured on images it was not optimised on); the test points at
the label that gathers most, with the p-value of its share against the other labels' (MAD of the log
counts, one-sided, Bonferroni over the labels, as the scan's count-aware rule). BAN's reference code prints
the predicted-label histogram and leaves the decision open; this statistic and its level are this
project's, chosen on the populations' tune splits (docs/results.md). BAN's feature-decoupling mask, which
the paper adds to sharpen the histogram, is not used.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.detection.evidence import Evidence, bonferroni_normal
from neuralcleanse.detection.prepare import ready
from neuralcleanse.errors import InputError
from neuralcleanse.models.neurons import Neurons, batch_statistics


MIN_IMAGES = 20  # half push the noise, half are judged: fewer tell nothing


class NeuronNoise:
    """The neuron-noise test.

    >>> evidence = NeuronNoise().test(model, clean_data)
    >>> evidence.candidate, evidence.p_value

    `eps` bounds the starting noise (BAN: 0.3; 0.1 here, chosen on the MNIST population's tune split, where
    0.3 left batch-norm nets at 15-30% accuracy, clean or not, and their errors piling up alike), `steps` sign
    steps of eps/steps each push it (BAN's README: 30), on a batch of `batch` clean images (BAN: 128); `draws`
    noises are drawn, each judged on up to `eval_samples` other clean images; `alpha` is the level at which the
    test alone flags. `batch_norm_only`: run on networks with batch-norm layers only, the papers' setting; on the
    channels of a network without one the test separated nothing on the tune split (AUROC 0.4-0.6).
    """

    def __init__(self, eps: float = 0.1, steps: int = 30, batch: int = 128, draws: int = 3, eval_samples: int = 512,
                 alpha: float = 0.05, batch_norm_only: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if not 0 < eps < 1:
            raise InputError(f"`eps` must lie in (0, 1), got {eps!r}")
        for name, value in (("steps", steps), ("batch", batch), ("draws", draws), ("eval_samples", eval_samples)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"`{name}` must be a whole number of at least 1, got {value!r}")
        if not 0 < alpha < 1:
            raise InputError(f"`alpha` must lie in (0, 1), got {alpha!r}")
        self.eps, self.steps, self.batch, self.draws, self.eval_samples = eps, steps, batch, draws, eval_samples
        self.alpha, self.seed, self.device = alpha, seed, torch.device(device)
        self.batch_norm_only = batch_norm_only

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "batch": self.batch, "draws": self.draws,
                "eval_samples": self.eval_samples, "alpha": self.alpha, "batch_norm_only": self.batch_norm_only,
                "seed": self.seed}

    def test(self, model: nn.Module, data: ImageDataset) -> Evidence:
        prepared = ready(model, data, self.device)
        return self.test_logits(prepared.logits, data, prepared.num_classes)

    def test_logits(self, model: nn.Module, data: ImageDataset, num_classes: int,
                    labels: list[int] | None = None) -> Evidence:
        """The test on a network whose outputs are logits (what the scan hands over), with clean `data`;
        the pile-up is judged among `labels` (all by default)."""
        labels = list(range(num_classes)) if labels is None else [int(v) for v in labels]
        start = time.perf_counter()
        try:
            neurons = Neurons.of(model, self.device)
        except InputError as exc:
            return Evidence.not_run("noise", self.alpha, str(exc))
        if not neurons.layers:
            return Evidence.not_run("noise", self.alpha, "the network has no hidden layer whose neurons can be perturbed")
        if self.batch_norm_only and neurons.kind != "batch-norm":
            return Evidence.not_run("noise", self.alpha, "the network has no batch-norm layer; on convolutional and dense "
                                                         "neurons the test was measured uninformative (docs/results.md)")
        if len(data) < MIN_IMAGES:
            return Evidence.not_run("noise", self.alpha, f"it needs at least {MIN_IMAGES} clean images, got {len(data)}")
        was_training = model.training
        model.eval()
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            counts, noisy_accuracy = self._counts(model, neurons, data, num_classes)
        finally:
            for p in frozen:
                p.requires_grad_(True)
            model.train(was_training)
        scores, top, p_value, z = pile_up(counts[labels])
        return Evidence("noise", labels, scores, labels[top], p_value, self.alpha, statistic=z,
                        details={"settings": self.settings(), "layers": neurons.kind, "neurons": neurons.count,
                                 "counts": [int(v) for v in counts], "noisy_accuracy": noisy_accuracy,
                                 "wrong": int(sum(counts))},
                        wall_time=time.perf_counter() - start)

    def _counts(self, model: nn.Module, neurons: Neurons, data: ImageDataset, num_classes: int
                ) -> tuple[np.ndarray, float]:
        """Per label, how many clean images of other labels the noisy network sends there (all draws)."""
        generator = torch.Generator().manual_seed(self.seed)
        counts = np.zeros(num_classes, dtype=np.int64)
        correct = total = 0
        batch = min(self.batch, len(data) // 2)  # a small set: half pushes the noise, half judges it
        for _ in range(self.draws):
            order = torch.randperm(len(data), generator=generator)
            fit = data.subset(order[:batch])
            held = data.subset(order[batch: batch + self.eval_samples])
            neurons.draw_noise(self.eps, generator)
            with batch_statistics(model):  # as BAN pushes it; judged below in evaluation mode
                self._push(model, neurons, fit)
            with torch.no_grad(), neurons.applied(model):
                predicted = torch.cat([model(held.x[i: i + 256].to(self.device)).argmax(1).cpu()
                                       for i in range(0, len(held), 256)])
            wrong = predicted != held.y
            counts += np.bincount(predicted[wrong].numpy(), minlength=num_classes)[:num_classes]
            correct += int((~wrong).sum())
            total += len(held)
        neurons.clear_noise()
        return counts, correct / max(total, 1)

    def _push(self, model: nn.Module, neurons: Neurons, fit: ImageDataset) -> None:
        x, y = fit.x.to(self.device), fit.y.to(self.device)
        noise = neurons.noise_tensors()
        step = self.eps / self.steps
        for _ in range(self.steps):
            for t in noise:
                t.requires_grad_(True)
            with neurons.applied(model):
                loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, noise)
            with torch.no_grad():
                for t, g in zip(noise, grads):
                    t.add_(step * g.sign())
        for t in noise:
            t.requires_grad_(False)


def pile_up(counts: np.ndarray) -> tuple[list[float], int, float, float]:
    """Per label its log count (+1), the label with most, and that label's one-sided robust z-score and
    Bonferroni p-value among the labels (MAD of the log counts)."""
    logs = np.log1p(np.asarray(counts, dtype=np.float64))
    top = int(np.argmax(logs))
    median = float(np.median(logs))
    mad = 1.4826 * float(np.median(np.abs(logs - median)))
    z = (logs[top] - median) / mad if mad > 0 else (math.inf if logs[top] > median else 0.0)
    return [float(v) for v in logs], top, bonferroni_normal(z, len(logs)), float(z)
