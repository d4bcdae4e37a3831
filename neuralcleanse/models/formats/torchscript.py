"""TorchScript files (`torch.jit.save`): a network and its code in TorchScript, which loads without running
Python from the file."""
from __future__ import annotations

from pathlib import Path

import torch

from neuralcleanse.errors import InputError


def is_torchscript(names: list[str]) -> bool:
    """Whether a zip's member names are those of a TorchScript archive."""
    return any(name.endswith("constants.pkl") or name.endswith("/code/__torch__.py") or "/code/" in name
               for name in names)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises many types for a bad archive
        raise InputError(f"cannot read TorchScript model {path}: {str(exc).splitlines()[0]}") from None


def save_torchscript(net: torch.jit.ScriptModule, path: str | Path) -> None:
    torch.jit.save(net, str(path))
