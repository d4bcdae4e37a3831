"""Weights alone: a state_dict (`torch.save`) or `.safetensors` file, with the code that builds the network
(a factory, `package.module:function`). Loading reads tensors only; the factory is the user's own code."""
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


def save_state_dict(net: nn.Module, path: str | Path) -> None:
    """The network's weights in its own naming, loadable again with the same factory."""
    torch.save(net.state_dict(), str(path))
