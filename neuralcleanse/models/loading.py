"""Turn a model file into a Classifier, whatever produced it."""
from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path

import torch

from neuralcleanse.data.preprocessing import Preprocessing
from neuralcleanse.errors import InputError
from neuralcleanse.models.checks import check_finite
from neuralcleanse.models.checkpoint import classifier_from_checkpoint, is_checkpoint
from neuralcleanse.models.classifier import Classifier, ModelInfo
from neuralcleanse.models.exported import is_exported_archive, load_exported
from neuralcleanse.models.foreign import (ChannelsLastInput, build_from_factory, detect_layout, load_onnx,
                                          load_pickled_module)


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
    `.pt2`, ONNX, a state_dict with its factory, a trusted pickled module).

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
    foreign = dict(num_classes=num_classes, input_shape=input_shape, preprocessing=preprocessing,
                   preprocessing_overrides=preprocessing_overrides, input_layout=input_layout)
    if factory:
        net = build_from_factory(path, factory, factory_kwargs or {})
        return _foreign(net, "factory", path, {"factory": factory, "factory_kwargs": factory_kwargs or {}}, **foreign)
    if path.suffix.lower() == ".onnx":
        return _foreign(load_onnx(path), "onnx", path, {}, **foreign)
    if path.suffix.lower() == ".safetensors":
        raise InputError(f"{path} holds only weights; name the code that builds the network with "
                         "`factory` package.module:function (and `factory_kwargs`)")
    archive = _archive_names(path)
    if path.suffix.lower() == ".pt2" or is_exported_archive(archive):
        # A .pt2 can run code as it loads (see exported.py): trusted files only, like a pickle.
        return _foreign(load_exported(path, trust_pickle), "exported", path, {}, **foreign)
    if _is_torchscript(archive):
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises many types for a bad archive
            raise InputError(f"cannot read TorchScript model {path}: {str(exc).splitlines()[0]}") from None
        return _foreign(net, "torchscript", path, {}, **foreign)
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses arbitrary objects: most likely a whole pickled nn.Module.
        return _foreign(load_pickled_module(path, trust_pickle), "pickle", path, {}, **foreign)
    except Exception as exc:
        raise InputError(
            f"cannot read {path} as a neuralcleanse checkpoint or TorchScript file: {_first_sentence(exc)}"
        ) from None
    if not is_checkpoint(payload):
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            raise InputError(f"{path} holds only weights (a state_dict); name the code that builds the network "
                             "with `factory` package.module:function (and `factory_kwargs`)")
        raise InputError(
            f"{path} is a PyTorch file but not a neuralcleanse checkpoint; export the model with "
            "torch.export or torch.jit.script/trace, or give its state_dict with `factory`"
        )
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


def _foreign(net: torch.nn.Module, source: str, path: Path, metadata: dict, *, num_classes: int | None,
             input_shape, preprocessing: Preprocessing | None, preprocessing_overrides: dict | None,
             input_layout: str) -> Classifier:
    info = ModelInfo(
        num_classes=int(num_classes or 0),
        input_shape=tuple(input_shape) if input_shape else (0, 0, 0),
        preprocessing=preprocessing or Preprocessing(**(preprocessing_overrides or {})),
        arch=None, source=source, metadata={"path": str(path), "input_layout": input_layout, **metadata},
    )
    model = Classifier(net, info)
    model.eval()
    return model


def _settle_layout(model: Classifier, input_shape: tuple[int, int, int]) -> None:
    """NHWC networks get an adapter so the rest of the tool can keep feeding NCHW."""
    wanted = model.info.metadata.get("input_layout")
    if wanted not in ("auto", "nhwc") or isinstance(model.net, ChannelsLastInput):
        return
    layout = detect_layout(model.net, input_shape) if wanted == "auto" else "nhwc"
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
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as exc:
        raise InputError(
            f"the model failed on input of shape (N,{','.join(map(str, input_shape))}): {str(exc).splitlines()[0][:200]}"
        ) from None
    if out.ndim != 2:
        raise InputError(f"the model should output (N, num_classes) logits, got shape {tuple(out.shape)}")
    check_finite(out, "a blank image")
    outputs = int(out.shape[1])
    if model.info.num_classes and model.info.num_classes != outputs:
        raise InputError(f"`num_classes` is {model.info.num_classes} but the model outputs {outputs} scores")
    model.info.num_classes = outputs
    if num_classes and num_classes > outputs:
        raise InputError(f"the data has labels up to {num_classes - 1} but the model outputs only {outputs} scores")


def _archive_names(path: Path) -> list[str]:
    """The member names of a zip archive (TorchScript, torch.export and torch.save files are ones), or []."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"model file {path} is a damaged archive; export or download it again") from None


def _is_torchscript(names: list[str]) -> bool:
    return any(name.endswith("constants.pkl") or name.endswith("/code/__torch__.py") or "/code/" in name
               for name in names)


def _first_sentence(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(". ")[0][:200]
