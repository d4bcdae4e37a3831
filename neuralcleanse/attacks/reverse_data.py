"""Training data reverse-engineered from a model, as the Trojan attack (Liu et al., NDSS 2018) makes it
when the attacker has none: per label, images descended from an average image until the model gives
that label a high score."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from neuralcleanse.attacks.trojan_trigger import total_variation
from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import InputError
from neuralcleanse.models.checks import output_kind


@dataclass
class ReversedData:
    """The images, labelled with the label each was made for, and per label the model's mean score
    (probability) for it on the starting images and on the results."""

    data: ImageDataset
    score_before: torch.Tensor
    score_after: torch.Tensor


def _probabilities(outputs: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "probabilities":
        return outputs
    if kind == "log-probabilities":
        return outputs.exp()
    return outputs.softmax(1)


def reverse_engineer_data(model: nn.Module, num_classes: int, input_shape: Sequence[int], *,
                          per_label: int = 100, init: torch.Tensor | None = None, noise: float = 0.3,
                          steps: int = 300, lr: float = 0.05, stop_score: float | None = 0.99, smooth: float = 0.0,
                          seed: int = 0, batch_size: int = 256,
                          device: str | torch.device = "cpu") -> ReversedData:
    """`per_label` images per label: each starts from `init` (a (C, H, W) average image in [0, 1]; by
    default mid-grey) plus Gaussian noise of std `noise` (so the images differ), and descends on
    (1 - score)^2, the score being the model's probability for the label, pixels clamped to [0, 1]
    (the paper's objective). Adam (step `lr`) takes `steps` steps; each label's images stop moving
    once all of them score above 0.99."""
    c, h, w = (int(v) for v in input_shape)
    if per_label < 1:
        raise InputError("`per_label` must be at least 1")
    base = torch.full((c, h, w), 0.5) if init is None else init.detach().float().cpu().reshape(c, h, w)
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(per_label)
    start = (base[None] + noise * torch.randn(len(y), c, h, w, generator=gen)).clamp(0, 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            kind = output_kind(model(start[:8].to(device)))
        out = []
        before = torch.zeros(len(y))
        after = torch.zeros(len(y))
        for lo in range(0, len(y), batch_size):
            x = start[lo : lo + batch_size].to(device).clone().requires_grad_(True)
            yb = y[lo : lo + batch_size].to(device)
            rows = torch.arange(len(yb), device=device)
            opt = torch.optim.Adam([x], lr=lr)
            active = torch.ones(len(yb), 1, 1, 1, device=device)
            for step in range(steps + 1):
                with torch.enable_grad():
                    score = _probabilities(model(x), kind)[rows, yb]
                    if step == 0:
                        before[lo : lo + len(yb)] = score.detach().cpu()
                    done = score.detach() > (stop_score if stop_score is not None else 2.0)
                    if step == steps or bool(done.all()):
                        break
                    loss = ((1 - score) ** 2).sum()
                    if smooth:
                        loss = loss + smooth * total_variation(x)
                    (grad,) = torch.autograd.grad(loss, x)
                # A label whose images all score high enough stops; the others go on.
                for label in yb[done].unique().tolist():
                    if bool(done[yb == label].all()):
                        active[yb == label] = 0
                x.grad = grad * active
                opt.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
            after[lo : lo + len(yb)] = score.detach().cpu()
            out.append(x.detach().cpu())
    finally:
        model.train(was_training)
    per = lambda s: torch.stack([s[y == k].mean() for k in range(num_classes)])  # noqa: E731
    data = ImageDataset(torch.cat(out), y, num_classes, "reversed", check_range=False)
    return ReversedData(data, per(before), per(after))
