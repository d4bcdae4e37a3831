"""A folder of image files: class sub-folders (ImageFolder layout), optionally under train/ and
test/, or a flat folder of unlabelled images."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from neuralcleanse.data.dataset import DatasetSplits, ImageDataset
from neuralcleanse.data.images import read_image
from neuralcleanse.errors import InputError

log = logging.getLogger(__name__)

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}
UNLABELLED = -1


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and _images_in(d))


def is_image_folder(folder: Path) -> bool:
    split = [folder / s for s in ("train", "test")]
    if all(d.is_dir() for d in split):
        return all(_class_dirs(d) for d in split)
    return bool(_class_dirs(folder)) or bool(_images_in(folder))


def _read(paths: list[Path], size: tuple[int, int] | None, grey: bool) -> torch.Tensor:
    images = [read_image(path, size, grey) for path in paths]
    # The message gives sizes in PIL's layout, (H, W) or (H, W, 3), not the tensors' (C, H, W).
    shapes = {tuple(x.shape[1:]) + (() if grey else (3,)) for x in images}
    if len(shapes) > 1:
        raise InputError(f"the images under {paths[0].parent.parent} have different sizes {sorted(shapes)[:3]}; "
                         "give the model's input size (a checkpoint carries it) or resize them")
    return torch.stack(images)


def _is_grey(paths: list[Path]) -> bool:
    for path in paths[:50]:
        try:
            with Image.open(path) as img:
                if img.mode not in ("L", "1", "I;16", "I"):
                    return False
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise InputError(f"cannot read image {path}: {exc}") from None
    return True


def load_image_folder(folder: str | Path, *, image_size: tuple[int, int] | None = None,
                      channels: int | None = None) -> DatasetSplits:
    """Labels are the class folders' positions in sorted order (so `0_cat, 1_dog` or `00000, 00001`
    give the expected ids). Images are resized to `image_size` (H, W) when given; `channels` 1 or 3
    forces grey or RGB, else grey only when every image is grey. A flat folder gives labels -1:
    the caller must take labels from the model."""
    root = Path(folder)
    if all((root / s).is_dir() for s in ("train", "test")):
        splits = {s: root / s for s in ("train", "test")}
    else:
        splits = {"all": root}
    classes = [d.name for d in _class_dirs(next(iter(splits.values())))]
    sets = {}
    for split, base in splits.items():
        dirs = _class_dirs(base)
        if dirs:
            if [d.name for d in dirs] != classes:
                raise InputError(f"{base} has class folders {[d.name for d in dirs][:5]}... unlike {classes[:5]}...")
            paths = [p for d in dirs for p in _images_in(d)]
            labels = [i for i, d in enumerate(dirs) for _ in _images_in(d)]
        else:
            paths, labels = _images_in(base), [UNLABELLED] * len(_images_in(base))
        if not paths:
            raise InputError(f"no images ({', '.join(sorted(EXTENSIONS))}) found in {base}")
        grey = channels == 1 if channels in (1, 3) else _is_grey(paths)
        sets[split] = ImageDataset(_read(paths, image_size, grey), torch.tensor(labels), max(len(classes), 1),
                                   root.name)
    if "all" in sets:
        return DatasetSplits(sets["all"], sets["all"])
    return DatasetSplits(sets["train"], sets["test"])
