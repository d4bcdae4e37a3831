"""Model files made elsewhere: a state_dict or safetensors file plus the code that builds the
network (a factory), a whole pickled nn.Module (only when trusted), and NHWC-input networks."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuralcleanse.errors import InputError


def import_factory(spec: str) -> Any:
    """`package.module:attribute` (a function or class that returns the network)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"`factory` {spec!r} must look like package.module:function_or_class")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of the user's code
        raise InputError(f"cannot import {module_name!r} for `factory`: {str(exc).splitlines()[0][:200]}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{module_name!r} has no {attr!r} (from `factory` {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"`factory` {spec!r} is not callable")
    return obj


def parse_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except ValueError as exc:
        raise InputError(f"`factory_kwargs` must be a JSON object, e.g. '{{\"num_classes\": 10}}': {exc}") from None
    if not isinstance(kwargs, dict):
        raise InputError("`factory_kwargs` must be a JSON object, e.g. '{\"num_classes\": 10}'")
    return kwargs


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file or a torch.save'd state_dict (also nested under
    "state_dict" or "model", as many training scripts save them)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"cannot read safetensors file {path}: {exc}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read weights from {path}: {str(exc).splitlines()[0][:200]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return obj


def build_from_factory(path: Path, spec: str, kwargs: dict[str, Any]) -> nn.Module:
    factory = import_factory(spec)
    try:
        net = factory(**kwargs)
    except Exception as exc:
        raise InputError(f"`factory` {spec} failed with {kwargs}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(net, nn.Module):
        raise InputError(f"`factory` {spec} returned {type(net).__name__}, not a torch.nn.Module")
    state = read_state_dict(path)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"the weights in {path} do not fit the network {spec} builds: "
                         f"{' '.join(str(exc).split())[:300]}") from None
    return net.eval()


def load_pickled_module(path: Path, trust: bool) -> nn.Module:
    if not trust:
        raise InputError(
            f"{path} is a pickled model: loading it runs code stored in the file. If you trust where it came "
            "from, add `trust_pickle`; otherwise export it as TorchScript, or give its state_dict with `factory`")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling user files fails in many ways, e.g. missing classes
        raise InputError(f"cannot unpickle {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} "
                         "(the code that defined the model must be importable)") from None
    if not isinstance(obj, nn.Module):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj.eval()


class ChannelsLastInput(nn.Module):
    """Lets a network that takes NHWC input be fed the tool's NCHW tensors."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 2, 3, 1))


def first_conv_in_channels(net: nn.Module) -> int | None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def detect_layout(net: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """"nchw" or "nhwc": the layout whose probe the network accepts, the first convolution's input
    channels deciding when both pass (a square C×C image, say)."""
    c, h, w = input_shape
    ok = {}
    for layout, shape in (("nchw", (2, c, h, w)), ("nhwc", (2, h, w, c))):
        try:
            with torch.no_grad():
                out = net(torch.zeros(shape))
            ok[layout] = out.ndim == 2
        except Exception:  # the wrong layout fails inside the user's network in any way
            ok[layout] = False
    if ok["nchw"] and ok["nhwc"]:
        return "nchw" if first_conv_in_channels(net) in (None, c) else "nhwc"
    if ok["nhwc"]:
        return "nhwc"
    return "nchw"


ONNX_HELP = ("ONNX models need two extra packages: pip install 'onnx>=1.21' && pip install --no-deps "
             "onnx2torch==1.5.15 (--no-deps: onnx2torch declares torchvision, which it only needs for detection "
             "ops a classifier does not use)")


def _import_onnx2torch():
    """onnx2torch imports torchvision at the top of its NMS and RoIAlign converters only. Without
    torchvision installed (this project keeps it out), it is imported with a stand-in whose two
    functions fail loudly, so a classifier converts and a detector says what it lacks."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("onnx2torch") is None or importlib.util.find_spec("onnx") is None:
        raise InputError(ONNX_HELP)
    if importlib.util.find_spec("torchvision") is not None:
        import onnx2torch
        return onnx2torch

    def missing(*_a, **_k):
        raise InputError("this ONNX model uses NMS or RoIAlign, which need torchvision; it is not a classifier")

    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms, ops.roi_align, stub.ops = missing, missing, ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops
    try:
        import onnx2torch
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return onnx2torch


def load_onnx(path: Path) -> nn.Module:
    """An ONNX file converted to a PyTorch module (the scan needs gradients, which ONNX runtimes lack)."""
    onnx2torch = _import_onnx2torch()
    try:
        net = onnx2torch.convert(str(path))
    except Exception as exc:  # malformed files and unsupported operators raise many types
        raise InputError(f"cannot convert ONNX model {path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    return net.eval()
