"""Click options shared by several commands (the parsing of their values lives in neuralcleanse.options)."""
from __future__ import annotations

from typing import Callable

import click

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

def with_options(options: list[Callable]) -> Callable:
    """Applies a list of click options as one decorator, in the order listed."""

    def deco(fn: Callable) -> Callable:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return deco


