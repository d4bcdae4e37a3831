"""Any image dataset the user saved with numpy: the escape hatch for data we have no loader for."""
from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from neuralcleanse.data.dataset import DatasetSplits, ImageDataset, to_nchw_unit
from neuralcleanse.errors import InputError

log = logging.getLogger(__name__)

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
SINGLE_KEYS = ("x", "y")
_FORMAT = (
    "save it with np.savez(path, x=images, y=labels) or "
    "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
)


def load_npz(path: str | Path, *, num_classes: int | None = None) -> DatasetSplits:
    """Images and labels from an .npz holding either `x`, `y` or `x_train`, `y_train`, `x_test`, `y_test`.

    A single set (`x`, `y`) becomes both the train and the test split (the same object): scans
    only need clean images, so a separate test set is not required. Images may be uint8 0-255
    or float [0, 1], shaped (N,H,W), (N,H,W,C) or (N,C,H,W); labels are integers from 0, and
    `num_classes` defaults to the largest label + 1.
    """
    return read_npz_splits(path, num_classes=num_classes)


def read_npz_splits(
    path: str | Path,
    *,
    num_classes: int | None = None,
    name: str | None = None,
    require_splits: bool = False,
) -> DatasetSplits:
    """load_npz with the knobs other loaders need: a fixed name, and refusing a single-set file."""
    path = Path(path)
    arrays = _read_arrays(path, require_splits)
    name = name or path.stem
    if "x_train" in arrays:
        xs = {"train": (arrays["x_train"], arrays["y_train"]), "test": (arrays["x_test"], arrays["y_test"])}
    else:
        xs = {"all": (arrays["x"], arrays["y"])}
    labels = {split: _labels(path, split, x, y) for split, (x, y) in xs.items()}
    top = max(int(y.max()) for y in labels.values()) + 1
    if num_classes is None:
        num_classes = top
    elif num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    elif top > num_classes:
        raise InputError(
            f"{path} has label {top - 1} but num_classes is {num_classes}; labels must lie in "
            f"0..{num_classes - 1} (pass a larger num_classes or fix the labels)"
        )
    sets = {
        split: ImageDataset(_images(path, split, x), torch.from_numpy(labels[split]), num_classes, name)
        for split, (x, _) in xs.items()
    }
    if "all" in sets:
        log.info("%s holds a single set (x, y): using it as both train and test split", path)
        return DatasetSplits(sets["all"], sets["all"])
    return DatasetSplits(sets["train"], sets["test"])


def _read_arrays(path: Path, require_splits: bool) -> dict[str, np.ndarray]:
    if not path.exists():
        raise InputError(f"dataset file {path} does not exist; check the path")
    if not path.is_file():
        raise InputError(f"dataset path {path} is not a file; pass an .npz file")
    if not zipfile.is_zipfile(path):
        # np.load would otherwise try it as a pickle or a bare .npy and fail obscurely.
        raise InputError(f"{path} is not an .npz archive (not a zip file, or corrupt); {_FORMAT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            if all(k in files for k in SPLIT_KEYS):
                keys = SPLIT_KEYS
            elif not require_splits and all(k in files for k in SINGLE_KEYS):
                keys = SINGLE_KEYS
            else:
                wanted = "x_train, y_train, x_test, y_test" if require_splits else "x, y (or x_train, y_train, x_test, y_test)"
                raise InputError(
                    f"{path} lacks the arrays {wanted}; it holds {', '.join(files) or 'no arrays'}; {_FORMAT}"
                )
            return {k: npz[k] for k in keys}
    except InputError:
        raise
    except ValueError as exc:
        # allow_pickle=False refuses object arrays: ragged lists or Python objects, not images.
        raise InputError(f"cannot read {path}: {exc}; store plain numeric arrays; {_FORMAT}") from exc
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"cannot read {path} ({exc}); the file is corrupt, re-create it") from exc


def _labels(path: Path, split: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    where = f"{path} ({split})" if split != "all" else str(path)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(
            f"{where}: labels must be a 1-D array of class ids, got shape {y.shape} "
            "(for one-hot labels store y.argmax(1))"
        )
    if len(x) != len(y):
        raise InputError(f"{where}: {len(x)} images but {len(y)} labels; they must match one to one")
    if len(y) == 0:
        raise InputError(f"{where} holds no images")
    if np.issubdtype(y.dtype, np.floating):
        # Whole-number floats are what some frameworks save; fractions mean these are not class ids.
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InputError(f"{where}: labels must be whole-number class ids, found non-integer values")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise InputError(f"{where}: labels must be integer class ids, got dtype {y.dtype}")
    if y.min() < 0:
        raise InputError(f"{where}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int64)


def _images(path: Path, split: str, x: np.ndarray) -> torch.Tensor:
    try:
        return to_nchw_unit(x)
    except ValueError as exc:
        where = f"{path} ({split})" if split != "all" else str(path)
        raise InputError(f"{where}: {exc}") from exc
