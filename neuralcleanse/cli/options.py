"""Options shared by several commands, the parsing of their text into values, and the translation of
library messages (which name arguments in backticks) into flags."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Mapping

import click
import torch

from neuralcleanse.errors import InputError

if TYPE_CHECKING:
    from neuralcleanse.data import DatasetSplits
    from neuralcleanse.models.classifier import Classifier

trigger_options = [
    click.option("--target", type=int, multiple=True,
                 help="Target label (default 0). Repeat for several infected labels, with one trigger each "
                      "(docs/attacks.md).", ),
    click.option("--trigger-size", type=int, multiple=True, help="Side of the square patch (default 4)."),
    click.option("--trigger-position", multiple=True,
                 help="bottom-right (default), bottom-left, top-right, top-left, center, or ROW,COL."),
    click.option("--trigger-colour", multiple=True, help="Patch colour in [0,1]: one grey value or R,G,B (default 1.0)."),
    click.option("--trigger-image", type=click.Path(dir_okay=False), multiple=True,
                 help="An image file used as the patch's content (resized to the patch)."),
    click.option("--trigger-file", type=click.Path(dir_okay=False), multiple=True,
                 help="A trigger of any shape: an .npz with mask (1xHxW or HxW) and pattern (CxHxW), or stacked "
                      "(Kx1xHxW, KxCxHxW), optionally target; or an image file the model's size (its opaque, or "
                      "else bright, pixels are the mask). Instead of the patch options; repeat for more triggers."),
    click.option("--source-labels", default=None,
                 help="Source-specific backdoor: only images of these labels (e.g. 3,4) carrying the trigger go to "
                      "the target; --cover-rate of the others carry it with their own label."),
    click.option("--cover-rate", type=float, default=None,
                 help="With --source-labels: share of the other labels' images stamped and left with their label "
                      "(default: --poison-rate)."),
]

# Each trigger option is given once (shared by every trigger) or once per trigger, in order.
PATCH_OPTIONS = {"trigger_size": "--trigger-size", "trigger_position": "--trigger-position",
                 "trigger_colour": "--trigger-colour", "trigger_image": "--trigger-image"}

trojan_options = [
    click.option("--layer", default=None,
                 help="Trojan: layer whose neurons the trigger is made for (default: the first dense layer, the "
                      "paper's FC6); a wrong name lists the layers."),
    click.option("--neurons", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Trojan: how many of the layer's neurons (largest summed |weight| first)."),
    click.option("--neuron-side", type=click.Choice(["incoming", "outgoing"]), default="incoming", show_default=True,
                 help="Trojan: rank neurons by the weights into them (paper) or the next layer's weights (released code)."),
    click.option("--mask", "mask_spec", default=None,
                 help="Trojan trigger's shape: square:SIZE@POS (POS: bottom-right, top-left, ..., center or ROW,COL) "
                      "or image:FILE (default: a square of 22% of the image side, bottom-right: 6 px on MNIST)."),
    click.option("--target-activation", type=float, default=100.0, show_default=True,
                 help="Trojan: the value the trigger drives the neurons to."),
    click.option("--retrain-data", type=click.Choice(["clean", "reverse"]), default="clean", show_default=True,
                 help="Trojan: retrain on clean images of the train split (--samples of them) or on images "
                      "reverse-engineered from the model (the paper's, for an attacker without data)."),
    click.option("--samples", type=click.IntRange(min=1), default=2000, show_default=True,
                 help="Trojan, --retrain-data clean: how many images."),
]

# The arguments of TrojanAttack that trojan_options set (for messages).
TROJAN_FLAGS = {
    "layer": "--layer", "neurons": "--neurons", "neuron_side": "--neuron-side", "mask": "--mask",
    "target_activation": "--target-activation", "data": "--retrain-data", "samples": "--samples", "target": "--target",
}

preprocessing_options = [
    click.option("--num-classes", type=int, default=None, help="Label count (for models from elsewhere)."),
    click.option("--factory", default=None,
                 help="package.module:function_or_class that builds the network MODEL's weights (state_dict "
                      "or .safetensors) belong to."),
    click.option("--factory-kwargs", default=None, help="JSON object of keyword arguments for --factory."),
    click.option("--trust-pickle", is_flag=True,
                 help="Allow MODEL to be a whole pickled nn.Module or a torch.export .pt2 program (loading "
                      "either can run code from the file; docs/security.md)."),
    click.option("--input-layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True,
                 help="How a model from elsewhere takes images; auto tries both on a probe."),
    click.option("--labels-from-model", is_flag=True,
                 help="Use the model's own predictions as labels (for unlabelled data; the scan trusts them)."),
    click.option("--pixel-range", type=click.Choice(["1", "255"]), default=None,
                 help="What the model takes: pixels in [0,1] or [0,255]."),
    click.option("--mean", default=None, help="Per-channel mean the model subtracts, e.g. 0.485,0.456,0.406."),
    click.option("--std", default=None, help="Per-channel std the model divides by."),
    click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default=None),
]

# The arguments of load_model_and_data (and load_model, and the Preprocessing fields) that
# preprocessing_options set.
PREPROCESSING_FLAGS = {
    "num_classes": "--num-classes", "factory": "--factory", "factory_kwargs": "--factory-kwargs",
    "trust_pickle": "--trust-pickle", "input_layout": "--input-layout", "labels_from_model": "--labels-from-model",
    "pixel_scale": "--pixel-range", "mean": "--mean", "std": "--std", "channel_order": "--channel-order",
}

# Arguments that several library functions share with one flag each.
COMMON_FLAGS = {
    "out": "--out", "force": "--force", "resume": "--resume", "labels": "--labels", "layer": "--layer", "lr": "--lr",
    "method": "--method", "model_path": "MODEL", "data_source": "--data", "workers": "--workers", "ray": "--ray",
    "schedule": "--schedule",
}

_ARGUMENT = re.compile(r"`(\w+)`")


def as_flags(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each backticked argument name that `flags` knows replaced by its flag; other
    backticked words (package names, commands) stay as they are."""
    return _ARGUMENT.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


def with_options(options: list[Callable]) -> Callable:
    """Applies a list of click options as one decorator, in the order listed."""

    def deco(fn: Callable) -> Callable:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return deco


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
    from neuralcleanse.data import Preprocessing

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
    """load_model_and_data with the values of preprocessing_options, as click passes them."""
    from neuralcleanse.models.foreign import parse_kwargs
    from neuralcleanse.models.inputs import load_model_and_data

    overrides = parse_preprocessing(pixel_range, mean, std, channel_order)
    return load_model_and_data(model_path, data_source, num_classes=num_classes, preprocessing_overrides=overrides,
                               factory=factory, factory_kwargs=parse_kwargs(factory_kwargs) if factory_kwargs else None,
                               trust_pickle=trust_pickle, input_layout=input_layout,
                               labels_from_model=labels_from_model)
