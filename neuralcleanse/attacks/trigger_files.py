"""Triggers described by the user: a patch (optionally with an image file's content), a whole image as a
watermark-like trigger, and trigger files (`OUT.trigger.npz`, written next to the models `train` and
`attack trojan` make, and read back by `train --trigger-file`). Bad values raise InputError.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from neuralcleanse.data.trigger import Trigger, patch_trigger
from neuralcleanse.data.images import read_image, read_image_with_alpha
from neuralcleanse.files import write_atomic
from neuralcleanse.errors import InputError


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


def image_trigger(path: str | Path, input_shape: Sequence[int]) -> Trigger:
    """A whole image file as a watermark-like trigger, resized to the model's input: the mask is the
    image's opaque pixels (alpha at least 0.5) when it has an alpha channel, else its pixels brighter
    than mid-grey (a light logo on a black background); the pattern is the image's colours."""
    c, h, w = (int(v) for v in input_shape)
    colours, alpha = read_image_with_alpha(path, (h, w), grey=c == 1, what="trigger image")
    if colours.shape[0] != c:
        raise InputError(f"the model takes {c}-channel images; {path} cannot be used as their trigger")
    shape = alpha if alpha is not None else colours.mean(0)
    mask = (shape >= 0.5).float()
    if not bool(mask.any()):
        raise InputError(f"{path} has no {'opaque' if alpha is not None else 'bright'} pixel to make a trigger "
                         "mask from (the mask is the pixels with alpha, or else brightness, of at least 0.5)")
    return Trigger(mask, colours * mask)


# ---- trigger files ----------------------------------------------------------------------------

TRIGGER_SUFFIX = ".trigger.npz"
# A trigger file is the user's own input, but a damaged one must not make numpy allocate without bound.
_MAX_TRIGGER_BYTES = 1 << 30


def trigger_file_path(model_path: str | Path) -> Path:
    """Where the trigger of the model written to `model_path` goes: its suffix replaced, so
    `runs/model.pt` -> `runs/model.trigger.npz`."""
    return Path(model_path).with_suffix(TRIGGER_SUFFIX)


def write_trigger_file(path: str | Path, triggers: Sequence[Trigger], targets: Sequence[int], *,
                       attack: str, source_labels: Sequence[int] | None = None) -> Path:
    """One trigger: `mask` (1, H, W), `pattern` (C, H, W), `target` a 0-d integer. Several: the same
    stacked, `mask` (K, 1, H, W), `pattern` (K, C, H, W), `target` (K,). Also `attack` (its name) and,
    for source-specific backdoors, `source_labels`. Values in [0, 1], float32."""
    if len(triggers) != len(targets) or not triggers:
        raise ValueError("give one target per trigger, and at least one trigger")
    masks = np.stack([t.mask[None].detach().cpu().numpy() for t in triggers]).astype(np.float32)
    patterns = np.stack([t.pattern.detach().cpu().numpy() for t in triggers]).astype(np.float32)
    target = np.asarray([int(v) for v in targets], dtype=np.int64)
    arrays: dict[str, Any] = {"mask": masks, "pattern": patterns, "target": target, "attack": np.str_(attack)}
    if len(triggers) == 1:
        arrays.update(mask=masks[0], pattern=patterns[0], target=target[0])
    if source_labels is not None:
        arrays["source_labels"] = np.asarray([int(v) for v in source_labels], dtype=np.int64)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return write_atomic(path, save)


def read_trigger_file(path: str | Path, input_shape: Sequence[int] | None = None
                      ) -> tuple[list[Trigger], list[int] | None]:
    """The triggers of a trigger file (see `write_trigger_file`; a single mask may also be (H, W), and
    stacked masks (K, H, W)), checked for shape and range, and their targets when it records them."""
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(i.file_size for i in zf.infolist())
        if declared > _MAX_TRIGGER_BYTES:
            raise InputError(f"trigger file {name} holds {declared / 2**20:.0f} MiB, far more than a trigger needs")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k in ("mask", "pattern", "target")}
    except FileNotFoundError:
        raise InputError(f"trigger file {path} not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read trigger file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                         "(expected an .npz with arrays mask and pattern)") from None
    for key in ("mask", "pattern"):
        if key not in arrays:
            raise InputError(f"trigger file {name} has no '{key}' array (it needs mask and pattern, optionally target)")
        if not np.issubdtype(arrays[key].dtype, np.number) or np.issubdtype(arrays[key].dtype, np.complexfloating):
            raise InputError(f"trigger file {name}: '{key}' is not a numeric array")
    mask, pattern = (arrays[k].astype(np.float32) for k in ("mask", "pattern"))
    if pattern.ndim == 3:
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        mask, pattern = mask[None], pattern[None]
    elif pattern.ndim == 4 and mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if pattern.ndim != 4 or mask.ndim != 3 or mask.shape[0] != pattern.shape[0] or mask.shape[1:] != pattern.shape[2:]:
        raise InputError(f"trigger file {name}: mask {arrays['mask'].shape} and pattern {arrays['pattern'].shape} do not "
                         "fit: give mask 1xHxW (or HxW) with pattern CxHxW, or stacked Kx1xHxW with KxCxHxW")
    for key, arr in (("mask", mask), ("pattern", pattern)):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise InputError(f"trigger file {name}: '{key}' must be finite and lie in [0, 1], found "
                             f"{np.nanmin(arr):.3g}..{np.nanmax(arr):.3g}")
    k = pattern.shape[0]
    if input_shape is not None:
        c, h, w = (int(v) for v in input_shape)
        if pattern.shape[1:] != (c, h, w):
            raise InputError(f"trigger file {name} holds {pattern.shape[1]}x{pattern.shape[2]}x{pattern.shape[3]} "
                             f"(CxHxW) patterns but the images are {c}x{h}x{w}")
    if not all(bool(m.any()) for m in mask):
        raise InputError(f"trigger file {name}: a mask is all zeros, so its trigger changes nothing")
    targets = None
    if "target" in arrays:
        target = arrays["target"]
        if not np.issubdtype(target.dtype, np.integer) or target.size != k or target.ndim > 1:
            raise InputError(f"trigger file {name}: 'target' must be {'an integer' if k == 1 else f'{k} integers'}, "
                             f"one per trigger")
        targets = [int(v) for v in target.reshape(-1)]
    return [Trigger(torch.from_numpy(m.copy()), torch.from_numpy(p.copy())) for m, p in zip(mask, pattern)], targets
