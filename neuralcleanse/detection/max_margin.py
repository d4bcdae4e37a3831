"""MM-BD (Wang, Xiang, Miller and Kesidis, IEEE S&P 2024): a backdoor's target class reaches an outlying
logit margin.

For every label t, images are optimised from random starts to maximise the margin logit_t(x) − max_{j≠t}
logit_j(x) over the image domain; the label's statistic is the largest margin reached. A backdoor gives its
target a shortcut to a huge margin, whatever the trigger's shape (a patch, a blend, a warp), so no
assumption on trigger size is made, and no clean data is needed. The null is a Gamma distribution fitted
to every label's statistic but the largest; the largest's p-value is that of the maximum of K draws from it.

Faithful to the reference code where it matters (logits, images clamped to [0, 1] before the model, the
largest margin over the starts, the Gamma null and its order-statistic p-value, level 0.05). Images are in
raw pixel space, the model's own preprocessing applied after, as for the trigger search; a network that
ends in a softmax is read before it (on probabilities every label's margin saturates alike). The optimiser
and budget are this project's, chosen on the populations' tune splits (docs/results.md): the reference's
SGD at 0.01 moves an image by the size of the input gradient, which differs by orders of magnitude between
a network taking 0..255 pixels and one normalising [0, 1] pixels; Adam's steps do not.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.detection.evidence import Evidence, largest_of_gamma
from neuralcleanse.detection.prepare import ready
from neuralcleanse.errors import InputError

OPTIMISERS = ("adam", "sgd")
MAX_ROWS = 512  # images optimised at once (labels × starts), to bound memory on many-label models


class MaxMargin:
    """The MM-BD test.

    >>> evidence = MaxMargin().test(model, data)   # `data` only settles the model's input shape and labels
    >>> evidence.p_value, evidence.candidate

    `starts` random images per label, `steps` optimiser steps (stopping early when the loss changes by less
    than `tolerance` of itself), `lr` the optimiser's rate; `alpha` the level at which the test alone flags.
    """

    def __init__(self, starts: int = 5, steps: int = 50, lr: float = 0.1, optimizer: str = "adam",
                 alpha: float = 0.05, tolerance: float = 1e-5, relative: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if optimizer not in OPTIMISERS:
            raise InputError(f"unknown `optimizer` {optimizer!r}; use one of {', '.join(OPTIMISERS)}")
        for name, value in (("starts", starts), ("steps", steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"`{name}` must be a whole number of at least 1, got {value!r}")
        if not lr > 0:
            raise InputError(f"`lr` must be positive, got {lr!r}")
        if not 0 < alpha < 1:
            raise InputError(f"`alpha` must lie in (0, 1), got {alpha!r}")
        self.starts, self.steps, self.lr, self.optimizer = starts, steps, lr, optimizer
        self.alpha, self.tolerance, self.seed, self.device = alpha, tolerance, seed, torch.device(device)
        self.relative = relative

    def settings(self) -> dict[str, Any]:
        return {"starts": self.starts, "steps": self.steps, "lr": self.lr, "optimizer": self.optimizer,
                "alpha": self.alpha, "tolerance": self.tolerance, "relative": self.relative, "seed": self.seed}

    def test(self, model: nn.Module, data: ImageDataset) -> Evidence:
        """`model`: a Classifier or an nn.Module taking raw [0,1] pixels, checked and read before any final
        softmax as the scan does."""
        prepared = ready(model, data, self.device)
        return self.test_logits(prepared.logits, tuple(data.input_shape), prepared.num_classes, data=data)

    def test_logits(self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                    labels: list[int] | None = None, data: ImageDataset | None = None) -> Evidence:
        """The test on a network whose outputs are logits (what the scan hands over), on `labels` (all by
        default; the null is fitted to them)."""
        labels = list(range(num_classes)) if labels is None else [int(v) for v in labels]
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        natural = None
        try:
            margins, steps_run = self._margins(model, input_shape, labels)
            if self.relative and data is not None:  # each label's margin beyond what its own clean images reach
                natural = self._natural(model, data, labels)
                margins = [m - n for m, n in zip(margins, natural)]
        finally:
            for p in frozen:
                p.requires_grad_(True)
            model.train(was_training)
        top, p_value = largest_of_gamma(margins)
        return Evidence("mmbd", labels, margins, labels[top], p_value, self.alpha, statistic=margins[top],
                        details={"settings": self.settings(), "steps_run": steps_run, "natural": natural,
                                 "median_margin": float(torch.tensor(margins).median())},
                        wall_time=time.perf_counter() - start)

    def _margins(self, model: nn.Module, input_shape: tuple[int, ...], wanted: list[int]) -> tuple[list[float], int]:
        generator = torch.Generator().manual_seed(self.seed)
        per_chunk = max(1, MAX_ROWS // self.starts)
        margins: list[float] = []
        steps_run = 0
        for first in range(0, len(wanted), per_chunk):
            labels = torch.tensor(wanted[first: first + per_chunk]).repeat_interleave(self.starts)
            x = torch.rand((len(labels), *input_shape), generator=generator).to(self.device).requires_grad_(True)
            labels = labels.to(self.device)
            optimiser = (torch.optim.Adam([x], lr=self.lr) if self.optimizer == "adam"
                         else torch.optim.SGD([x], lr=self.lr))
            last = None
            for _ in range(self.steps):
                loss = -_margin(model(x.clamp(0, 1)), labels).sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                steps_run += 1
                value = float(loss.detach())
                if last is not None and abs(last - value) <= self.tolerance * abs(last):
                    break
                last = value
            with torch.no_grad():
                reached = _margin(model(x.clamp(0, 1)), labels).view(-1, self.starts)
            margins += [float(v) for v in reached.max(1).values.cpu()]
        return margins, steps_run


    @torch.no_grad()
    def _natural(self, model: nn.Module, data: ImageDataset, labels: list[int]) -> list[float]:
        """Per label, the 95th percentile of the margins its own clean images reach."""
        out = []
        margins = torch.cat([_margin(model(data.x[i:i + 256].to(self.device)), data.y[i:i + 256].to(self.device)).cpu()
                             for i in range(0, len(data), 256)])
        for label in labels:
            own = margins[data.y == label]
            out.append(float(torch.quantile(own, 0.95)) if len(own) else 0.0)
        return out


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logit of the label minus the largest other logit, per row."""
    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).max(1).values
    return own - others
