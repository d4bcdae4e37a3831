"""Supervised training with a progress bar and a seed."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from neuralcleanse.data.augment import Augmentation, Mixup
from neuralcleanse.data.dataset import ImageDataset


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


DISTILL_TEMPERATURE = 2.0


def distillation_loss(out: torch.Tensor, teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hinton's soft-target term: T^2 x KL(teacher || model) of the outputs softened at temperature T."""
    t = DISTILL_TEMPERATURE
    with torch.no_grad():
        soft = F.log_softmax(teacher(x) / t, dim=1)
    return t * t * F.kl_div(F.log_softmax(out / t, dim=1), soft, log_target=True, reduction="batchmean")


def train_classifier(
    model: nn.Module,
    data: ImageDataset,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
    augment: Augmentation | None = None,
    keep_eval: Sequence[nn.Module] = (),
    optimizer: str = "adam",
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    mixup: Mixup | None = None,
) -> list[float]:
    """Adam on cross-entropy with a cosine learning-rate decay; returns each epoch's mean loss.

    `augment`, when given, transforms each batch (after any poisoning, as an attacker's
    victim would augment the poisoned set). Parameters that do not require gradients stay as they
    are; the modules in `keep_eval` stay in eval mode (frozen layers: no dropout, no batch-norm
    statistics updates). `optimizer` "sgd" uses SGD with momentum 0.9 instead of Adam.

    `teacher` with `distill` > 0 adds `distill` x the KL divergence (at temperature DISTILL_TEMPERATURE,
    scaled by its square) from the teacher's outputs on each batch *before* `augment` to the model's
    on the batch after it: an augmented input is taught to answer as the teacher answers the plain one.
    `mixup` (with a teacher) mixes images first; the teacher answers the mixed image, and cross-entropy
    is taken only on the rows left unmixed (a mixed image has no one label)."""
    seed_everything(seed)
    # A stream of its own: seeded like BadNets' poison draw, the first epoch would visit all
    # poisoned images first and the model would collapse onto the target label.
    gen = torch.Generator().manual_seed(seed + 104729)
    model.to(device)
    model.train()
    for module in keep_eval:
        module.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
    steps_per_epoch = -(-len(data) // batch_size)
    # Annealing to zero settles the weights; it is worth about half a point of accuracy here.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    x, y = data.x.to(device), data.y.to(device)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen).to(device)
        total = torch.zeros((), device=device)
        bar = tqdm(range(0, len(data), batch_size), desc=f"{desc} {epoch + 1}/{epochs}",
                   disable=None if progress else True, leave=False, unit="batch")
        for start in bar:
            idx = order[start : start + batch_size]
            plain, labelled = (x[idx], None) if mixup is None or teacher is None else mixup(x[idx], gen)
            xb = plain if augment is None else augment(plain, gen)
            out = model(xb)
            if labelled is None:
                loss = F.cross_entropy(out, y[idx])
            else:  # the batch's mean, with the mixed rows' terms left out
                loss = (F.cross_entropy(out, y[idx], reduction="none") * labelled).sum() / len(idx)
            if teacher is not None and distill > 0:
                loss = loss + distill * distillation_loss(out, teacher, plain)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
        losses.append(float(total) / len(data))
    model.eval()
    return losses
