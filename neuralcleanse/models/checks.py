"""Checks a model must pass before a scan means anything, for the CLI and the Python API alike.

The usual ways a scan silently goes wrong with a model made elsewhere: it takes NHWC input, its
preprocessing is not the one assumed (accuracy near chance), or it ends in a softmax (the
optimisation then sees probabilities, whose gradient vanishes where they saturate).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import clean_accuracy
from neuralcleanse.models.classifier import Classifier

log = logging.getLogger(__name__)

OUTPUT_KINDS = ("logits", "probabilities", "log-probabilities")


@dataclass
class ModelCheck:
    """What the checks found: accuracy on (a sample of) the clean data and what the outputs are."""

    clean_accuracy: float
    output_kind: str


def output_kind(outputs: torch.Tensor) -> str:
    """Whether a batch of outputs are logits, probabilities (rows of non-negative values summing
    to 1) or log-probabilities (rows whose exponentials sum to 1)."""
    out = outputs.double()
    if out.numel() == 0:
        return "logits"
    if bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones(len(out), dtype=out.dtype), atol=1e-3):
        return "probabilities"
    if bool((out <= 0).all()) and torch.allclose(out.exp().sum(1), torch.ones(len(out), dtype=out.dtype), atol=1e-3):
        return "log-probabilities"
    return "logits"


def check_model(model: Classifier, data: ImageDataset, device: torch.device | str = "cpu",
                sample: int = 2000) -> ModelCheck:
    """Refuses too little data or non-finite outputs; warns loudly when accuracy on the clean data
    is near chance (mismatched preprocessing is the usual cause) or when the outputs are not logits."""
    if len(data) < 3 * model.num_classes:
        raise InputError(f"too few clean samples: {len(data)} for a {model.num_classes}-label model "
                         f"({len(data) / model.num_classes:.1f} per label); give at least 3 per label, "
                         f"{3 * model.num_classes} in all (the scan draws up to 1,000, balanced over labels)")
    probe = data.random_sample(sample)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = torch.cat([model(probe.x[i : i + 256].to(device)).float().cpu() for i in range(0, len(probe), 256)])
    model.train(was_training)
    check_finite(outputs, "the clean samples")
    kind = output_kind(outputs)
    acc = clean_accuracy(model, probe, device=device)
    chance = 1.0 / max(model.num_classes, 1)
    if acc < max(0.5, 3 * chance):
        log.warning(
            "the model's accuracy on these clean samples is only %.1f%% (chance is %.1f%%): check the "
            "preprocessing (`pixel_scale`, `mean`, `std`, `channel_order`) and the labels; "
            "a scan of a model that cannot classify its data means nothing", 100 * acc, 100 * chance)
    return ModelCheck(acc, kind)


def check_finite(outputs: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(outputs).all()):
        raise InputError(f"the model outputs NaN or Inf on {where}; check the model file and its "
                         "preprocessing (`pixel_scale`, `mean`, `std`)")
