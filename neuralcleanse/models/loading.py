"""Turn a model file into a Classifier, whatever produced it (formats/ has one module per format), and settle
what a file could not say (label count, input shape and layout) against the data."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.data.preprocessing import Preprocessing
from neuralcleanse.errors import InputError
from neuralcleanse.models.checks import check_finite
from neuralcleanse.models.classifier import Classifier, ModelInfo
from neuralcleanse.models.formats import detect_format, read_network
from neuralcleanse.models.formats.checkpoint import classifier_from_checkpoint
from neuralcleanse.models.layout import ChannelsLastInput, detect_layout


def load_model(
    path: str | Path,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    preprocessing: Preprocessing | None = None,
    preprocessing_overrides: dict | None = None,
    factory: str | None = None,
    factory_kwargs: dict | None = None,
    trust_pickle: bool = False,
    input_layout: str = "auto",
) -> Classifier:
    """Loads one of the tool's checkpoints or a model file from elsewhere (TorchScript, torch.export
    `.pt2`, ONNX, a state_dict or `.safetensors` with its factory, a trusted pickled module).

    A foreign model is taken to accept NCHW float input unless `input_layout` says otherwise;
    `preprocessing` says what it expects (default: [0,1] pixels as they are); for a checkpoint,
    `preprocessing_overrides` (field → value) replaces only the fields the user set. Its label count
    and input shape come from the arguments, or from the data when the caller fills them in later
    (see `complete_model_info`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if not path.is_file():
        raise InputError(f"model path is not a file: {path}")
    if input_layout not in ("auto", "nchw", "nhwc"):
        raise InputError(f"input layout must be auto, nchw or nhwc, not {input_layout!r}")
    detected = detect_format(path, factory)
    if detected.format == "checkpoint":
        return _checkpoint(detected.payload, num_classes, preprocessing_overrides)
    net = read_network(path, detected.format, factory=factory, factory_kwargs=factory_kwargs,
                       trust_pickle=trust_pickle)
    metadata = {"factory": factory, "factory_kwargs": factory_kwargs or {}} if detected.format == "factory" else {}
    info = ModelInfo(
        num_classes=int(num_classes or 0),
        input_shape=tuple(input_shape) if input_shape else (0, 0, 0),
        preprocessing=preprocessing or Preprocessing(**(preprocessing_overrides or {})),
        arch=None, source=detected.format,
        metadata={"path": str(path), "input_layout": input_layout, **metadata},
    )
    model = Classifier(net, info)
    model.eval()
    return model


def _checkpoint(payload: dict, num_classes: int | None, preprocessing_overrides: dict | None) -> Classifier:
    model = classifier_from_checkpoint(payload)
    if num_classes is not None and num_classes != model.num_classes:
        raise InputError(f"`num_classes` {num_classes} disagrees with the checkpoint's {model.num_classes} labels")
    if preprocessing_overrides:
        # Only the flags the user gave replace what the checkpoint says.
        try:
            spec = dataclasses.replace(model.info.preprocessing, **preprocessing_overrides)
        except ValueError as exc:
            raise InputError(f"bad preprocessing flags: {exc}") from None
        model.info.preprocessing = spec
        model.preprocess = spec.module()
    return model


def as_classifier(model: nn.Module, data: ImageDataset) -> Classifier:
    """A Classifier as the scan needs it: label count, input shape and layout settled against the
    data. A plain nn.Module is taken to take raw [0,1] pixels (wrap it in a Classifier with a
    Preprocessing to say otherwise); its input layout is probed like a model file's."""
    if not isinstance(model, nn.Module):
        raise InputError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(model, Classifier):
        model = Classifier(model, ModelInfo(0, (0, 0, 0), source="module", metadata={"input_layout": "auto"}))
    complete_model_info(model, data.input_shape, data.num_classes)
    return model


def _settle_layout(model: Classifier, input_shape: tuple[int, int, int]) -> None:
    """NHWC networks get an adapter so the rest of the tool can keep feeding NCHW."""
    wanted = model.info.metadata.get("input_layout")
    if wanted not in ("auto", "nhwc") or isinstance(model.net, ChannelsLastInput):
        return
    was_training = model.net.training
    model.net.eval()  # the probes must not move batch-norm statistics
    try:
        layout = detect_layout(model.net, input_shape) if wanted == "auto" else "nhwc"
    finally:
        model.net.train(was_training)
    if layout == "nhwc":
        model.net = ChannelsLastInput(model.net)
    model.info.metadata["input_layout"] = layout


def complete_model_info(model: Classifier, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Fills in what a foreign model file could not tell us, and checks its output size."""
    _settle_layout(model, tuple(input_shape))
    if not all(model.info.input_shape):
        model.info.input_shape = tuple(input_shape)
    elif tuple(model.info.input_shape) != tuple(input_shape):
        raise InputError(
            f"the model expects images of shape {tuple(model.info.input_shape)} (C,H,W) "
            f"but the data has {tuple(input_shape)}"
        )
    probe = torch.zeros((2, *input_shape))
    was_training = model.training
    model.eval()  # a probe in training mode would move a batch-norm layer's running statistics
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as exc:
        raise InputError(
            f"the model failed on input of shape (N,{','.join(map(str, input_shape))}): {str(exc).splitlines()[0][:200]}"
        ) from None
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise InputError(f"the model should output (N, num_classes) logits, got shape {tuple(out.shape)}")
    check_finite(out, "a blank image")
    outputs = int(out.shape[1])
    if model.info.num_classes and model.info.num_classes != outputs:
        raise InputError(f"`num_classes` is {model.info.num_classes} but the model outputs {outputs} scores")
    model.info.num_classes = outputs
    if num_classes and num_classes > outputs:
        raise InputError(f"the data has labels up to {num_classes - 1} but the model outputs only {outputs} scores")
