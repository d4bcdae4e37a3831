"""The tool's own checkpoint format: weights plus everything `scan` needs to use them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuralcleanse.data.preprocessing import Preprocessing
from neuralcleanse.errors import InputError
from neuralcleanse.files import write_atomic
from neuralcleanse.models.architectures import build_architecture
from neuralcleanse.models.classifier import Classifier, ModelInfo
from neuralcleanse.models.layers import reapply_pruning

FORMAT = "neuralcleanse-checkpoint"
VERSION = 1


def save_checkpoint(model: Classifier, path: str | Path) -> Path:
    """Writes atomically, so an interrupted save never leaves a half-written checkpoint."""
    info = model.info
    if info.arch is None:
        raise ValueError("only models built from a named architecture can be saved as checkpoints")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": info.arch,
        "arch_kwargs": dict(info.arch_kwargs),
        "num_classes": int(info.num_classes),
        "input_shape": [int(v) for v in info.input_shape],
        "preprocessing": info.preprocessing.to_dict(),
        "metadata": info.metadata,
        "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
    }
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def classifier_from_checkpoint(payload: dict, source: str = "neuralcleanse") -> Classifier:
    if payload.get("version", 0) > VERSION:
        raise InputError(f"checkpoint version {payload['version']} is newer than this tool understands; upgrade neuralcleanse")
    info = ModelInfo(
        num_classes=int(payload["num_classes"]),
        input_shape=tuple(int(v) for v in payload["input_shape"]),
        preprocessing=Preprocessing.from_dict(payload.get("preprocessing")),
        arch=payload["arch"],
        arch_kwargs=dict(payload.get("arch_kwargs", {})),
        source=source,
        metadata=dict(payload.get("metadata", {})),
    )
    try:
        net = build_architecture(info.arch, **info.arch_kwargs)
    except (KeyError, ValueError, TypeError) as exc:  # a checkpoint is data: an edited one may name anything
        raise InputError(f"the checkpoint names an architecture this tool cannot build: {exc}") from None
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"checkpoint weights do not fit architecture {info.arch!r}: {str(exc).splitlines()[0]}") from None
    model = Classifier(net, info)
    # A pruned model keeps its pruning as hooks; they are part of the model, so they come back too.
    reapply_pruning(model, info.metadata.get("pruning", []))
    model.eval()
    return model
