"""A model file and the data to check it with, loaded so that they fit each other.

Messages name arguments in backticks (`factory`) so that a front end can put its own names for them
(the CLI shows --factory).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from neuralcleanse.data import DatasetSplits, ImageDataset, load_dataset
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import predict
from neuralcleanse.models.classifier import Classifier
from neuralcleanse.models.loading import complete_model_info, load_model

log = logging.getLogger(__name__)


def load_model_and_data(model_path: str | Path, data_source: str | Path, *, num_classes: int | None = None,
                        preprocessing_overrides: Mapping[str, Any] | None = None, factory: str | None = None,
                        factory_kwargs: Mapping[str, Any] | None = None, trust_pickle: bool = False,
                        input_layout: str = "auto", labels_from_model: bool = False,
                        ) -> tuple[Classifier, DatasetSplits]:
    """The model (see `load_model` for the arguments) and the data, with what the model file could not
    say (label count, input shape) taken from the data.

    An image folder is resized to the model's input size when the model file gives it. Data without
    labels needs `labels_from_model`: the model's own predictions become the labels.
    """
    if factory_kwargs is not None and not factory:
        raise InputError("`factory_kwargs` needs `factory`")
    model = load_model(model_path, num_classes=num_classes, preprocessing_overrides=dict(preprocessing_overrides or {}),
                       factory=factory, factory_kwargs=dict(factory_kwargs or {}), trust_pickle=trust_pickle,
                       input_layout=input_layout)
    c, h, w = model.info.input_shape
    data = load_dataset(data_source, image_size=(h, w) if h and w else None, channels=c or None)
    complete_model_info(model, data.test.input_shape, data.test.num_classes)
    unlabelled = bool((data.test.y < 0).any())
    if unlabelled and not labels_from_model:
        raise InputError(f"{data_source} has no labels (a flat folder of images); add `labels_from_model` to "
                         "use the model's predictions, or sort the images into one sub-folder per class")
    if labels_from_model:
        data = use_model_labels(model, data)
    return model, data


def use_model_labels(model: Classifier, data: DatasetSplits, device: torch.device | str = "cpu") -> DatasetSplits:
    """Labels = the model's predictions. For data without labels; a backdoored model labels
    triggered-looking inputs wrongly, so this is weaker than true labels, and says so."""
    log.warning("using the model's own predictions as labels (`labels_from_model`): the scan then trusts the "
                "model it is checking; true labels are better when you have them")

    def relabel(split: ImageDataset) -> ImageDataset:
        return ImageDataset(split.x, predict(model, split.x, device=device), model.num_classes, split.name)

    test = relabel(data.test)
    return DatasetSplits(test, test) if data.train is data.test else DatasetSplits(relabel(data.train), test)
