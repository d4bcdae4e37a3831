"""Turn a model file into a Classifier, whatever produced it."""
from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import torch

from neuralcleanse.data.preprocessing import Preprocessing
from neuralcleanse.errors import InputError
from neuralcleanse.models.checkpoint import classifier_from_checkpoint, is_checkpoint
from neuralcleanse.models.classifier import Classifier, ModelInfo


def load_model(
    path: str | Path,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    preprocessing: Preprocessing | None = None,
    preprocessing_overrides: dict | None = None,
) -> Classifier:
    """Loads one of the tool's checkpoints or a TorchScript file.

    A TorchScript model is taken to accept NCHW float input; `preprocessing` says what it expects
    (default: [0,1] pixels as they are); for a checkpoint, `preprocessing_overrides` (field → value)
    replaces only the fields the user set. Its label count and input shape come from the arguments,
    or from the data when the caller fills them in later (see `complete_model_info`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if not path.is_file():
        raise InputError(f"model path is not a file: {path}")
    if _is_torchscript(path):
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises many types for a bad archive
            raise InputError(f"cannot read TorchScript model {path}: {str(exc).splitlines()[0]}") from None
        info = ModelInfo(
            num_classes=int(num_classes or 0),
            input_shape=tuple(input_shape) if input_shape else (0, 0, 0),
            preprocessing=preprocessing or Preprocessing(**(preprocessing_overrides or {})),
            arch=None,
            source="torchscript",
            metadata={"path": str(path)},
        )
        model = Classifier(net, info)
        model.eval()
        return model
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"cannot read {path} as a neuralcleanse checkpoint or TorchScript file: {str(exc).splitlines()[0][:200]}"
        ) from None
    if not is_checkpoint(payload):
        raise InputError(
            f"{path} is a PyTorch file but not a neuralcleanse checkpoint; "
            "export the model with torch.jit.script/trace and pass the TorchScript file"
        )
    model = classifier_from_checkpoint(payload)
    if num_classes is not None and num_classes != model.num_classes:
        raise InputError(f"--num-classes {num_classes} disagrees with the checkpoint's {model.num_classes} labels")
    if preprocessing_overrides:
        # Only the flags the user gave replace what the checkpoint says.
        try:
            spec = dataclasses.replace(model.info.preprocessing, **preprocessing_overrides)
        except ValueError as exc:
            raise InputError(f"bad preprocessing flags: {exc}") from None
        model.info.preprocessing = spec
        model.preprocess = spec.module()
    return model


def complete_model_info(model: Classifier, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Fills in what a foreign model file could not tell us, and checks its output size."""
    if not all(model.info.input_shape):
        model.info.input_shape = tuple(input_shape)
    elif tuple(model.info.input_shape) != tuple(input_shape):
        raise InputError(
            f"the model expects images of shape {tuple(model.info.input_shape)} (C,H,W) "
            f"but the data has {tuple(input_shape)}"
        )
    probe = torch.zeros((2, *input_shape))
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as exc:
        raise InputError(
            f"the model failed on input of shape (N,{','.join(map(str, input_shape))}): {str(exc).splitlines()[0][:200]}"
        ) from None
    if out.ndim != 2:
        raise InputError(f"the model should output (N, num_classes) logits, got shape {tuple(out.shape)}")
    outputs = int(out.shape[1])
    if model.info.num_classes and model.info.num_classes != outputs:
        raise InputError(f"--num-classes is {model.info.num_classes} but the model outputs {outputs} scores")
    model.info.num_classes = outputs
    if num_classes and num_classes > outputs:
        raise InputError(f"the data has labels up to {num_classes - 1} but the model outputs only {outputs} scores")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"model file {path} is a damaged archive; export or download it again") from None
    with zf:
        return any(name.endswith("constants.pkl") or name.endswith("/code/__torch__.py") or "/code/" in name
                   for name in zf.namelist())
