"""A model made ready for a test: checked against the data as the command line checks it, and read as
logits (before any final softmax), which every test's optimisation needs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.models.checks import ModelCheck, check_model
from neuralcleanse.models.classifier import Classifier
from neuralcleanse.models.loading import as_classifier
from neuralcleanse.models.outputs import logits_for_search


@dataclass
class ReadyModel:
    """The checked model, what the check found, and a view of it (sharing its weights) whose outputs are
    logits: `logits_from` says how they were obtained ("as is", "cut before softmax", "log of probabilities")."""

    model: Classifier
    check: ModelCheck
    logits: Classifier
    logits_from: str

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)


def ready(model: nn.Module, data: ImageDataset, device: torch.device | str = "cpu") -> ReadyModel:
    model = as_classifier(model, data).to(device)
    check = check_model(model, data, device)
    with torch.no_grad():
        probe = model.preprocess(data.x[:8].to(device))
    logits, logits_from = logits_for_search(model, check.output_kind, probe)
    return ReadyModel(model, check, logits, logits_from)
