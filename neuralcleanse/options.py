"""Option values given as text (command-line flags, manifest columns): their parsing, the model and data
they load, and the flag each library argument is shown as in messages.

Library messages name arguments in backticks (`factory`); `as_flags` puts the command line's names for them.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch

from neuralcleanse.data import DatasetSplits, Preprocessing
from neuralcleanse.errors import InputError
from neuralcleanse.models.classifier import Classifier
from neuralcleanse.models.formats.weights import parse_kwargs
from neuralcleanse.models.inputs import load_model_and_data

# The arguments of load_model_and_data (and load_model, and the Preprocessing fields) that
# preprocessing_options set.
PREPROCESSING_FLAGS = {
    "num_classes": "--num-classes", "factory": "--factory", "factory_kwargs": "--factory-kwargs",
    "trust_pickle": "--trust-pickle", "input_layout": "--input-layout", "labels_from_model": "--labels-from-model",
    "pixel_scale": "--pixel-range", "mean": "--mean", "std": "--std", "channel_order": "--channel-order",
}

# Arguments that several library functions share with one flag each.
COMMON_FLAGS = {
    "params": "--param",
    "out": "--out", "force": "--force", "resume": "--resume", "labels": "--labels", "layer": "--layer", "lr": "--lr",
    "method": "--method", "model_path": "MODEL", "data_source": "--data", "workers": "--workers", "ray": "--ray",
    "schedule": "--schedule",
}

_ARGUMENT = re.compile(r"`(\w+)`")


def as_flags(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each backticked argument name that `flags` knows replaced by its flag; other
    backticked words (package names, commands) stay as they are."""
    return _ARGUMENT.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


def parse_floats(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"expected comma-separated numbers, got {text!r}") from None


def parse_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"expected comma-separated label numbers, got {text!r}") from None


def parse_position(text: str, flag: str) -> str | tuple[int, ...]:
    """A named position as it is, ROW,COL as numbers (their count is checked with the patch)."""
    if "," not in text:
        return text
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{flag} {text!r} is not ROW,COL") from None


def parse_value(text: str) -> Any:
    """A parameter's value as text: a number, true/false, none, a comma-separated list of those, or else
    the text itself (a name)."""
    def one(item: str) -> Any:
        word = item.strip()
        if word.lower() in ("none", "null"):
            return None
        if word.lower() in ("true", "false"):
            return word.lower() == "true"
        for kind in (int, float):
            try:
                return kind(word)
            except ValueError:
                pass
        return word

    return tuple(one(v) for v in text.split(",")) if "," in text else one(text)


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs (`params`) as keyword arguments; dashes in a key read as underscores."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise InputError(f"`params` takes KEY=VALUE, e.g. steps=600; got {item!r}")
        if key in out:
            raise InputError(f"`params` names {key} twice")
        out[key] = parse_value(value)
    return out


def parse_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available to PyTorch")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu or cuda") from None


def parse_preprocessing(pixel_range: str | None, mean: str | None, std: str | None,
                        channel_order: str | None) -> dict[str, Any]:
    """The Preprocessing fields the flags set, checked before the model is loaded so that a typo costs
    no loading time."""
    given = {"pixel_scale": float(pixel_range) if pixel_range else None, "mean": parse_floats(mean) or None,
             "std": parse_floats(std) or None, "channel_order": channel_order}
    overrides = {k: v for k, v in given.items() if v is not None}
    # One without the other would pair with the model file's own: hardly ever what is meant.
    if ("mean" in overrides) != ("std" in overrides):
        raise InputError("give --mean and --std together")
    try:
        Preprocessing(**overrides)
    except ValueError as exc:
        raise InputError(f"bad preprocessing flags: {exc}") from None
    return overrides


def load_model_and_data_from_flags(model_path: str, data_source: str, *, num_classes: int | None,
                                   factory: str | None, factory_kwargs: str | None, trust_pickle: bool,
                                   input_layout: str, labels_from_model: bool, pixel_range: str | None,
                                   mean: str | None, std: str | None, channel_order: str | None,
                                   ) -> tuple[Classifier, DatasetSplits]:
    """load_model_and_data with the model options' values as text (the command line's, a manifest's)."""
    overrides = parse_preprocessing(pixel_range, mean, std, channel_order)
    return load_model_and_data(model_path, data_source, num_classes=num_classes, preprocessing_overrides=overrides,
                               factory=factory, factory_kwargs=parse_kwargs(factory_kwargs) if factory_kwargs else None,
                               trust_pickle=trust_pickle, input_layout=input_layout,
                               labels_from_model=labels_from_model)
