"""Triggers described by the user: a patch (optionally with an image file's content) or a mask and a
pattern read from image files.

Bad values raise InputError. Messages name arguments in backticks (`size`) so that a front end can
put its own names for them (the CLI shows --real-size).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from PIL import Image

from neuralcleanse.attacks.trigger import Trigger, patch_trigger
from neuralcleanse.data.images import read_image
from neuralcleanse.errors import InputError

if TYPE_CHECKING:
    from neuralcleanse.mitigation.backdoors import Backdoor
    from neuralcleanse.models.classifier import Classifier


def make_patch_trigger(input_shape: Sequence[int], size: int, position: str | tuple[int, int] = "bottom-right",
                       colour: float | Sequence[float] = 1.0, image: str | Path | None = None) -> Trigger:
    """`patch_trigger` for user input: the patch shows `image` (resized to it) when given, else `colour`."""
    pattern_image = None
    if image:
        pattern_image = read_image(image, (size, size), grey=input_shape[0] == 1,
                                   resample=Image.Resampling.BICUBIC, what="trigger image")
    try:
        return patch_trigger(input_shape, size, position, colour, pattern_image=pattern_image)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def read_trigger_image(path: str | Path, input_shape: Sequence[int], grey: bool = False) -> torch.Tensor:
    """A mask or pattern image, which must be the model's input size: a (C, H, W) tensor in [0, 1]."""
    _, h, w = input_shape
    image = read_image(path, grey=grey)
    if tuple(image.shape[1:]) != (h, w):
        raise InputError(f"{path} is {image.shape[2]}x{image.shape[1]} but the model takes {w}x{h} images")
    return image


def real_backdoors(model: Classifier, target: int | None = None, *, size: int | None = None,
                   position: str | tuple[int, int] = "bottom-right", colour: float | Sequence[float] = 1.0,
                   mask_path: str | Path | None = None, pattern_path: str | Path | None = None) -> list[Backdoor]:
    """The true trigger, to measure a mitigation against: a patch (`size`, `position`, `colour`) or a
    mask and pattern from image files when `target` is given, else what the checkpoint records."""
    # Here, not at the top: the mitigation package is large, and a patch for training needs none of it.
    from neuralcleanse.mitigation.backdoors import Backdoor, known_backdoors

    given = size is not None or mask_path or pattern_path
    if target is None:
        if given:
            raise InputError("give `target` with the real trigger")
        return known_backdoors(model.info.metadata)
    if not 0 <= target < model.num_classes:
        raise InputError(f"`target` must lie in 0..{model.num_classes - 1}")
    if bool(mask_path) != bool(pattern_path):
        raise InputError("give `mask_path` and `pattern_path` together")
    if mask_path:
        if size is not None:
            raise InputError("give the real trigger as a patch (`size`) or as `mask_path`/`pattern_path`, not both")
        trigger = Trigger(read_trigger_image(mask_path, model.input_shape, grey=True)[0],
                          read_trigger_image(pattern_path, model.input_shape, grey=model.input_shape[0] == 1))
    else:
        if size is None:
            raise InputError("give the real trigger with `target`: a patch (`size`, with `position` and `colour`) "
                             "or `mask_path` and `pattern_path`")
        trigger = make_patch_trigger(model.input_shape, size, position, colour)
    return [Backdoor(target, trigger)]
