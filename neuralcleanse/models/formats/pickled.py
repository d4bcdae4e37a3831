"""A whole pickled `nn.Module` (`torch.save(model)`): unpickling runs code named in the file, so only a
file the user says they trust is loaded."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from neuralcleanse.errors import InputError


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
