"""Model files, one module per format, and the one place where a file's format is chosen.

| format        | module          | recognised by                                      | loading runs code from the file |
|---------------|-----------------|----------------------------------------------------|---------------------------------|
| `checkpoint`  | checkpoint.py   | a `torch.save`d dict marked as this tool's         | no (tensors and plain data)     |
| `torchscript` | torchscript.py  | a zip with TorchScript's members                   | no                              |
| `exported`    | exported.py     | `.pt2`, or a zip with torch.export's members       | can: needs `trust_pickle`       |
| `factory`     | weights.py      | `factory` given: its state_dict or `.safetensors`  | no (the factory is your code)   |
| `pickle`      | pickled.py      | a `torch.save`d object that is not plain tensors   | yes: needs `trust_pickle`       |
| `onnx`        | onnx.py         | `.onnx`                                            | no                              |

`detect_format` decides once; `read_network` then hands the file to that format's module alone.
`save_like` writes a patched model back in the format it came in.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuralcleanse.errors import InputError
from neuralcleanse.files import write_atomic
from neuralcleanse.models.classifier import Classifier, script_net
from neuralcleanse.models.formats.checkpoint import is_checkpoint, save_checkpoint
from neuralcleanse.models.formats.exported import is_exported_archive, load_exported, save_exported
from neuralcleanse.models.formats.onnx import load_onnx, save_onnx
from neuralcleanse.models.formats.pickled import load_pickled_module
from neuralcleanse.models.formats.torchscript import is_torchscript, load_torchscript, save_torchscript
from neuralcleanse.models.formats.weights import build_from_factory, save_state_dict
from neuralcleanse.models.layout import ChannelsLastInput

log = logging.getLogger(__name__)
FORMATS = ("checkpoint", "torchscript", "exported", "factory", "pickle", "onnx")


@dataclass
class Detected:
    """A file's format, and for a checkpoint the payload already read while telling."""

    format: str
    payload: Any = None


def detect_format(path: Path, factory: str | None = None) -> Detected:
    """Which of FORMATS `path` is (with `factory`, the weights it builds a network for). Raises InputError, saying what to do,
    for a file no format takes (weights without a factory, a PyTorch file of something else)."""
    if factory:
        return Detected("factory")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return Detected("onnx")
    if suffix == ".safetensors":
        raise InputError(f"{path} holds only weights; name the code that builds the network with "
                         "`factory` package.module:function (and `factory_kwargs`)")
    names = _archive_names(path)
    if suffix == ".pt2" or is_exported_archive(names):
        return Detected("exported")
    if is_torchscript(names):
        return Detected("torchscript")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses arbitrary objects: most likely a whole pickled nn.Module.
        return Detected("pickle")
    except Exception as exc:
        raise InputError(
            f"cannot read {path} as a neuralcleanse checkpoint or TorchScript file: {_first_sentence(exc)}"
        ) from None
    if is_checkpoint(payload):
        return Detected("checkpoint", payload)
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise InputError(f"{path} holds only weights (a state_dict); name the code that builds the network "
                         "with `factory` package.module:function (and `factory_kwargs`)")
    raise InputError(f"{path} is a PyTorch file but not a neuralcleanse checkpoint; export the model with "
                     "torch.export or torch.jit.script/trace, or give its state_dict with `factory`")


def read_network(path: Path, fmt: str, *, factory: str | None = None, factory_kwargs: dict | None = None,
                 trust_pickle: bool = False) -> nn.Module:
    """The network in a file of format `fmt` (any but `checkpoint`, which carries more than a network)."""
    if fmt == "factory":
        return build_from_factory(path, factory, factory_kwargs or {})
    if fmt == "onnx":
        return load_onnx(path)
    if fmt == "exported":
        return load_exported(path, trust_pickle)
    if fmt == "torchscript":
        return load_torchscript(path)
    if fmt == "pickle":
        return load_pickled_module(path, trust_pickle)
    raise ValueError(f"no network reader for format {fmt!r}")


def save_like(model: Classifier, folder: Path) -> tuple[str, str]:
    """Writes `model` into `folder` in the format it was loaded from, with the same input convention (the
    network alone, preprocessing not baked in); returns (format written, file name). Where a program cannot
    be exported again, its weights are written instead (a state_dict in the network's own naming, loadable
    with the same `factory`), with a warning."""
    if model.info.arch is not None:
        return "checkpoint", save_checkpoint(model, folder / "model.pt").name
    script = script_net(model)
    if script is not None:
        write_atomic(folder / "model.torchscript.pt", lambda tmp: save_torchscript(script, tmp))
        return "torchscript", "model.torchscript.pt"
    nhwc = isinstance(model.net, ChannelsLastInput)
    net = model.net.net if nhwc else model.net
    c, h, w = model.info.input_shape
    writers = {"onnx": ("model.onnx", lambda tmp: save_onnx(net, tmp, (h, w, c) if nhwc else (c, h, w))),
               "exported": ("model.pt2", lambda tmp: save_exported(model, tmp))}
    if model.info.source in writers:
        name, write = writers[model.info.source]
        try:
            write_atomic(folder / name, write)
            return model.info.source, name
        except Exception as exc:  # exporters fail in many ways on code they cannot trace; the weights still go out
            log.warning("could not write the patched model as %s (%s); writing its state_dict instead",
                        model.info.source, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    write_atomic(folder / "model.state_dict.pt", lambda tmp: save_state_dict(net, tmp))
    return "state_dict", "model.state_dict.pt"


def _archive_names(path: Path) -> list[str]:
    """The member names of a zip archive (TorchScript, torch.export and torch.save files are ones), or []."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"model file {path} is a damaged archive; export or download it again") from None


def _first_sentence(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(". ")[0][:200]
