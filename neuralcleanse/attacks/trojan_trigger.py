"""The Trojan attack's trigger (Liu et al., NDSS 2018): a mask shape, the internal neurons it is made
for, and the pattern inside the mask that drives those neurons to a high value.

Layers are modules of the classifier's network, named as in `net.named_modules()`; a layer's
*units* (neurons) are its outputs along dimension 1 (channels of a convolution, averaged over space).
Messages name arguments in backticks (`layer`) so that a front end can put its own names for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from neuralcleanse.data.trigger import POSITIONS, Trigger, apply_trigger, patch_trigger
from neuralcleanse.errors import InputError
from neuralcleanse.models.layers import FeatureLayer, _net, capture_units, hookable_modules, module_name

# Side of the default square mask, as a share of the image's smaller side: 6 px on 28x28 MNIST, 7 px on
# 32x32 GTSRB (about 5% of the image's area, the paper's smaller masks cover 4-7%).
DEFAULT_MASK_SHARE = 0.22
DEFAULT_MASK_POSITION = "bottom-right"
# Which weights rank a layer's neurons: "incoming" (the paper: the weights connecting the neuron to the
# previous layer, i.e. the layer's own weight rows) or "outgoing" (the released code: the next layer's
# weights that read the neuron).
NEURON_SIDES = ("incoming", "outgoing")


def default_mask_size(input_shape: Sequence[int]) -> int:
    return max(1, round(DEFAULT_MASK_SHARE * min(int(input_shape[1]), int(input_shape[2]))))


def trojan_mask(spec: str | torch.Tensor | None, input_shape: Sequence[int]) -> torch.Tensor:
    """The (H, W) mask of a Trojan trigger from `spec`:

    - None: a square of `default_mask_size` at the bottom-right corner (1 pixel from the border);
    - "square:SIZE@POS" (POS one of bottom-right, bottom-left, top-right, top-left, center, or ROW,COL
      of its top-left pixel; "square:SIZE" puts it bottom-right, "square" takes the default size);
    - "image:FILE": the opaque (or, without alpha, bright) pixels of an image file resized to the input,
      a watermark-like shape (see `image_trigger`);
    - a tensor: the mask itself, (H, W) or (1, H, W), values in [0, 1].
    """
    c, h, w = (int(v) for v in input_shape)
    if spec is None:
        spec = "square"
    if isinstance(spec, torch.Tensor):
        mask = spec.detach().float().cpu()
        mask = mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask
        if tuple(mask.shape) != (h, w):
            raise InputError(f"`mask` must be {h}x{w} like the images, got {tuple(spec.shape)}")
        if not bool(torch.isfinite(mask).all()) or mask.min() < 0 or mask.max() > 1 or not bool(mask.any()):
            raise InputError("`mask` must lie in [0, 1] and not be all zeros")
        return mask
    kind, _, rest = str(spec).partition(":")
    if kind == "image" and rest:
        from neuralcleanse.attacks.trigger_files import image_trigger

        if not Path(rest).is_file():
            raise InputError(f"`mask` image {rest} not found")
        return image_trigger(rest, (c, h, w)).mask
    if kind == "square":
        size_text, _, position_text = rest.partition("@")
        try:
            size = int(size_text) if size_text else default_mask_size((c, h, w))
            position: str | tuple[int, ...] = position_text or DEFAULT_MASK_POSITION
            if "," in str(position):
                position = tuple(int(v) for v in str(position).split(","))
        except ValueError:
            raise InputError(f"`mask` {spec!r} is not square:SIZE@POS (e.g. square:6@bottom-right or "
                             "square:6@20,20)") from None
        if isinstance(position, tuple) and len(position) != 2:
            raise InputError(f"`mask` {spec!r}: give the position as ROW,COL")
        try:
            return patch_trigger((c, h, w), size, position).mask
        except ValueError as exc:
            raise InputError(f"`mask` {spec!r}: {exc}") from None
    raise InputError(f"unknown `mask` {spec!r}; use square:SIZE@POS (POS: {', '.join(POSITIONS)} or ROW,COL) "
                     "or image:FILE")


# ---- layers and neurons --------------------------------------------------------------------------


def call_order(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """The network's module names in the order a forward pass enters them (first entry only), from
    one pass on a blank image: registration order is not always execution order."""
    net = _net(model)
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=name: order.append(n) if n not in order else None)
               for name, m in net.named_modules()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *(int(v) for v in input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return order


def resolve_trojan_layer(model: nn.Module, name: str | None, input_shape: Sequence[int]) -> str:
    """The layer `name` (as in `net.named_modules()`, with or without a leading "net."), or by default
    the first dense (nn.Linear) layer a forward pass reaches: the paper's FC6."""
    modules = hookable_modules(
        model, "the Trojan attack reads and retrains internal layers through hooks, which TorchScript models do not "
        "run; give the model as a neuralcleanse checkpoint or a state_dict with `factory`")
    if name is None:
        linears = [n for n in call_order(model, input_shape) if isinstance(modules.get(n), nn.Linear)]
        if not linears:
            raise InputError("the model has no dense (nn.Linear) layer to attack by default; name one with `layer`")
        return linears[0]
    return module_name(modules, name, "`layer`")


def _weighted(module: nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else None


def neuron_scores(model: nn.Module, layer: str, input_shape: Sequence[int], side: str = "incoming") -> torch.Tensor:
    """Per unit of `layer`, the sum of the absolute weights connecting it: "incoming" (the paper) sums
    the weights from the previous layer into it (the layer's own weight rows, or those of the last
    weighted layer before it with as many outputs, when `layer` is an activation); "outgoing" (the
    released TrojanNN code) sums the next weighted layer's weights that read it."""
    if side not in NEURON_SIDES:
        raise InputError(f"`neuron_side` must be one of {', '.join(NEURON_SIDES)}, got {side!r}")
    modules = dict(_net(model).named_modules())
    with torch.no_grad(), capture_units(model, FeatureLayer(layer), detach=False) as seen:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        model(torch.zeros(1, *(int(v) for v in input_shape), device=device))
        model.train(was_training)
    units = int(seen[-1].shape[1])
    order = call_order(model, input_shape)
    at = order.index(layer) if layer in order else -1
    if at < 0:
        raise InputError(f"layer {layer!r} is not used in the model's forward pass")
    if side == "incoming":
        for name in reversed(order[: at + 1] + [n for n in order[at + 1:] if n.startswith(layer + ".")]):
            weight = _weighted(modules[name])
            if weight is not None and weight.shape[0] == units:
                return weight.detach().abs().flatten(1).sum(1).cpu()
        raise InputError(f"no weighted layer at or before `layer` {layer!r} has {units} outputs to rank its neurons "
                         "by (try `neuron_side` outgoing)")
    for name in order[at + 1:]:
        if name.startswith(layer + "."):
            continue
        weight = _weighted(modules[name])
        if weight is None:
            continue
        if weight.shape[1] == units:
            return weight.detach().abs().transpose(0, 1).flatten(1).sum(1).cpu()
        if weight.ndim == 2 and weight.shape[1] % units == 0:  # a dense layer reading a flattened convolution
            return weight.detach().abs().sum(0).view(units, -1).sum(1).cpu()
    raise InputError(f"no weighted layer after `layer` {layer!r} reads its {units} units (try `neuron_side` incoming)")


def select_neurons(model: nn.Module, layer: str, count: int, input_shape: Sequence[int],
                   side: str = "incoming") -> list[int]:
    """The `count` units of `layer` with the largest summed absolute weights (see `neuron_scores`),
    strongest first."""
    scores = neuron_scores(model, layer, input_shape, side)
    if not 1 <= count <= len(scores):
        raise InputError(f"`neurons` must lie in 1..{len(scores)} (layer {layer!r} has {len(scores)} units)")
    return [int(i) for i in torch.argsort(scores, descending=True, stable=True)[:count]]


# ---- the trigger -----------------------------------------------------------------------------------


@dataclass
class GeneratedTrigger:
    """The trigger and the selected neurons' values on it: before (the starting pattern) and after."""

    trigger: Trigger
    activation_before: list[float]
    activation_after: list[float]
    steps: int


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum()


def generate_trigger(model: nn.Module, layer: str, neurons: Sequence[int], mask: torch.Tensor,
                     input_shape: Sequence[int], *, target_activation: float = 100.0, steps: int = 500,
                     lr: float = 0.1, init: str = "random", smooth: float = 0.0, seed: int = 0,
                     device: str | torch.device = "cpu") -> GeneratedTrigger:
    """Descends on sum over the neurons of (target_activation - value)^2 with respect to the pattern,
    the gradient masked to the trigger region and pixels clamped to [0, 1], as the paper does; the
    input is the trigger alone on a black image (the paper's). `init`: "random" (uniform) or "grey"
    (0.5) inside the mask. `smooth` weighs a total-variation term that smooths the pattern. Stops once
    every neuron reaches the target value. Adam (step `lr`) takes the descent's steps."""
    if init not in ("random", "grey"):
        raise InputError(f"`init` must be random or grey, got {init!r}")
    c, h, w = (int(v) for v in input_shape)
    mask = mask.to(device).float()
    index = torch.as_tensor(list(neurons), dtype=torch.long, device=device)
    if init == "random":
        start = torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed)).to(device)
    else:
        start = torch.full((c, h, w), 0.5, device=device)
    pattern = (start * mask).requires_grad_(True)
    background = torch.zeros(1, c, h, w, device=device)
    opt = torch.optim.Adam([pattern], lr=lr)
    was_training = model.training
    model.eval()

    def values() -> torch.Tensor:
        with capture_units(model, FeatureLayer(layer), detach=False) as seen:
            model(apply_trigger(background, mask, pattern))
        return seen[-1][0, index]

    try:
        with torch.no_grad():
            before = values()
        done = 0
        for done in range(1, steps + 1):
            with torch.enable_grad():
                acts = values()
                loss = ((target_activation - acts) ** 2).sum()
                if smooth:
                    loss = loss + smooth * total_variation(pattern * mask)
                (grad,) = torch.autograd.grad(loss, pattern)
            pattern.grad = grad * mask
            opt.step()
            with torch.no_grad():
                pattern.clamp_(0.0, 1.0).mul_(mask)
            if bool((acts.detach() >= target_activation).all()):
                break
        with torch.no_grad():
            after = values()
    finally:
        model.train(was_training)
    trigger = Trigger(mask.detach().cpu(), (pattern.detach() * mask).cpu())
    return GeneratedTrigger(trigger, before.cpu().tolist(), after.cpu().tolist(), done)
