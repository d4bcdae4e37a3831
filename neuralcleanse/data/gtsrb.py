"""GTSRB traffic signs, from a prepared .npz or from the official download's folder layout."""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neuralcleanse.data.cache import load_cached, save_cached
from neuralcleanse.data.dataset import DatasetSplits, ImageDataset, to_nchw_unit
from neuralcleanse.data.npz import read_npz_splits
from neuralcleanse.data.locate import default_source
from neuralcleanse.errors import InputError

log = logging.getLogger(__name__)

NUM_CLASSES = 43
SIZE = 32
TEST_FRACTION = 0.2
ENV_VAR = "NEURALCLEANSE_GTSRB"
_SHARED_NPZ = Path("..") / "shared" / "data" / "gtsrb" / "gtsrb32_roi.npz"
_CLASS_DIR = re.compile(r"^\d{5}$")
_MAX_DEPTH = 3
_ROI_COLUMNS = ("Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2")
_CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused
_WHERE_TO_GET = (
    "download GTSRB_Final_Training_Images.zip from https://benchmark.ini.rub.de/gtsrb_dataset.html "
    f"and pass its unpacked folder, set ${ENV_VAR} to that folder or to an .npz with "
    "x_train, y_train, x_test, y_test (uint8 NHWC RGB)"
)


def load_gtsrb(source: str | Path | None = None, *, seed: int = 0) -> DatasetSplits:
    """43-class traffic signs as 3x32x32 RGB crops of each sign's region of interest.

    `source` is an .npz (x_train, y_train, x_test, y_test) or a folder of the official download.
    From a folder, the official test set is used when its labels (GT-final_test.csv) are there;
    otherwise 20% of the training images, shuffled with `seed`, become the test split.
    """
    path = _default_source() if source is None else Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".npz":
        return read_npz_splits(path, num_classes=NUM_CLASSES, name="gtsrb", require_splits=True)
    if path.is_dir():
        return _from_official_folder(path, seed)
    if not path.exists():
        raise InputError(f"GTSRB source {path} does not exist; {_WHERE_TO_GET}")
    raise InputError(f"GTSRB source {path} is neither an .npz file nor a folder; {_WHERE_TO_GET}")


def _default_source() -> Path:
    return default_source(ENV_VAR, _SHARED_NPZ, "GTSRB", _WHERE_TO_GET)


# ---- the official layout -------------------------------------------------------------------


def _walk(root: Path) -> Iterator[Path]:
    """Folders breadth-first, 0..3 levels below root, without listing inside class folders.

    Class folders hold thousands of images and never a layout, so listing them is wasted time.
    """
    level = [root]
    for depth in range(_MAX_DEPTH + 1):
        yield from level
        if depth < _MAX_DEPTH:
            level = [d for f in level if f == root or not _CLASS_DIR.match(f.name) for d in _subdirs(f)]


def _is_class_dir(d: Path) -> bool:
    return bool(_CLASS_DIR.match(d.name)) and (d / f"GT-{d.name}.csv").is_file()


def find_training_dir(root: Path) -> Path | None:
    """The folder holding class folders 000NN (each with GT-000NN.csv), at most 3 levels below root."""
    for folder in _walk(root):
        if (folder == root or not _CLASS_DIR.match(folder.name)) and any(_is_class_dir(d) for d in _subdirs(folder)):
            return folder
    return None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir())
    except OSError:
        return []


def _find_test_dir(root: Path, train_dir: Path) -> Path | None:
    """The official test images folder (Final_Test/Images), beside the training one or under root."""
    beside = train_dir.parent.parent / "Final_Test" / "Images"
    if beside.is_dir():
        return beside
    for folder in _walk(root):
        if folder.name == "Images" and folder.parent.name == "Final_Test":
            return folder
    return None


def _find_test_labels(test_dir: Path, root: Path) -> Path | None:
    """A test-set csv that carries ClassId; the one shipped with the test images does not.

    Users fetch GT-final_test.csv separately (GTSRB_Final_Test_GT.zip, which unpacks beside the
    GTSRB folder rather than inside it), so look from the images folder up to GTSRB's parent,
    and in the folder the user gave.
    """
    folders: list[Path] = []
    for f in (test_dir, *test_dir.parents[:3], root):
        if f not in folders:
            folders.append(f)
    named = [f / "GT-final_test.csv" for f in folders]
    others = [p for f in folders for p in sorted(f.glob("*.csv")) if p.name != "GT-final_test.csv"]
    for csv_path in named + others:
        if csv_path.is_file() and "ClassId" in _csv_header(csv_path):
            return csv_path
    return None


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f, delimiter=";"), [])
    except (OSError, UnicodeDecodeError):
        return []


def _read_gt_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read GTSRB annotation file {path}: {exc}") from exc
    missing = [c for c in (*_ROI_COLUMNS, "ClassId") if rows and c not in rows[0]]
    if missing:
        raise InputError(
            f"{path} lacks the column(s) {', '.join(missing)}; GTSRB csv files are semicolon-separated "
            "with Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
        )
    return rows


def _crop(image_path: Path, row: dict[str, str], csv_path: Path) -> np.ndarray:
    try:
        x1, y1, x2, y2 = (int(row[c]) for c in _ROI_COLUMNS[1:])
    except (TypeError, ValueError):
        raise InputError(f"{csv_path}: non-integer ROI for {row.get('Filename')}; the file is corrupt") from None
    try:
        with Image.open(image_path) as im:
            im = im.convert("RGB")
            w, h = im.size
            # The official docs give X2/Y2 as inclusive; PIL's box is exclusive on the right/bottom.
            box = (max(0, x1), max(0, y1), min(w, x2 + 1), min(h, y2 + 1))
            if box[0] >= box[2] or box[1] >= box[3]:
                raise InputError(f"{csv_path}: empty ROI {x1},{y1},{x2},{y2} for {image_path.name} ({w}x{h})")
            crop = im.crop(box).resize((SIZE, SIZE), Image.BILINEAR)
            return np.asarray(crop, dtype=np.uint8)
    except InputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read GTSRB image {image_path}: {exc}") from exc


def _load_listed(folder: Path, csv_path: Path, rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for row in rows:
        try:
            label = int(row["ClassId"])
        except (TypeError, ValueError):
            raise InputError(f"{csv_path}: non-integer ClassId for {row.get('Filename')}") from None
        if not 0 <= label < NUM_CLASSES:
            raise InputError(f"{csv_path}: ClassId {label} is outside 0..{NUM_CLASSES - 1}")
        image_path = folder / row["Filename"]
        if not image_path.is_file():
            raise InputError(f"{csv_path} lists {row['Filename']}, which is not in {folder}")
        images.append(_crop(image_path, row, csv_path))
        labels.append(label)
    return np.stack(images) if images else np.zeros((0, SIZE, SIZE, 3), np.uint8), np.asarray(labels, np.uint8)


def _from_official_folder(root: Path, seed: int) -> DatasetSplits:
    train_dir = find_training_dir(root)
    if train_dir is None:
        raise InputError(
            f"{root} holds no GTSRB training layout (class folders 000NN with GT-000NN.csv, up to "
            f"{_MAX_DEPTH} levels down, e.g. GTSRB/Final_Training/Images/00000); {_WHERE_TO_GET}"
        )
    class_dirs = [d for d in _subdirs(train_dir) if _is_class_dir(d)]
    test_dir = _find_test_dir(root, train_dir)
    test_csv = _find_test_labels(test_dir, root) if test_dir else None

    # The file count stands in for the contents: a partial unzip or an added test set re-decodes.
    count = sum(len(list(d.glob("*.ppm"))) for d in class_dirs)
    if test_csv is not None:
        count += len(list(test_dir.glob("*.ppm")))  # type: ignore[union-attr]
    key = f"{root.resolve()}|{count}|{test_csv}|v{_CACHE_VERSION}"
    cache_name = f"gtsrb-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    keys = ("x_train", "y_train", "x_test", "y_test")
    arrays = load_cached(cache_name, keys)
    if arrays is None:
        log.info("decoding GTSRB images under %s (once; the result is cached)", root)
        parts = [_load_listed(d, d / f"GT-{d.name}.csv", _read_gt_csv(d / f"GT-{d.name}.csv")) for d in class_dirs]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        if len(x_train) == 0:
            raise InputError(f"the GTSRB class folders under {train_dir} list no images; re-extract the download")
        if test_csv is not None:
            x_test, y_test = _load_listed(test_dir, test_csv, _read_gt_csv(test_csv))  # type: ignore[arg-type]
        else:
            x_test, y_test = np.zeros((0, SIZE, SIZE, 3), np.uint8), np.zeros((0,), np.uint8)
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        save_cached(cache_name, arrays)

    if len(arrays["x_test"]) == 0:
        # Split after the cache so that each seed gets its own split from the same decode.
        log.warning(
            "no official GTSRB test labels found under %s (GT-final_test.csv with a ClassId column, "
            "from GTSRB_Final_Test_GT.zip, unpacked beside the GTSRB folder); using a random %d/%d split of "
            "the training images with seed %d; GTSRB training images come in tracks of near-identical "
            "frames, so test accuracy on this split is optimistic",
            root, round(100 * (1 - TEST_FRACTION)), round(100 * TEST_FRACTION), seed,
        )
        order = np.random.default_rng(seed).permutation(len(arrays["x_train"]))
        n_test = int(round(TEST_FRACTION * len(order)))
        test_idx, train_idx = order[:n_test], order[n_test:]
        arrays = {
            "x_train": arrays["x_train"][train_idx], "y_train": arrays["y_train"][train_idx],
            "x_test": arrays["x_train"][test_idx], "y_test": arrays["y_train"][test_idx],
        }
    return DatasetSplits(_dataset(arrays["x_train"], arrays["y_train"]), _dataset(arrays["x_test"], arrays["y_test"]))


def _dataset(x: np.ndarray, y: np.ndarray) -> ImageDataset:
    return ImageDataset(to_nchw_unit(x), torch.from_numpy(y.astype(np.int64)), NUM_CLASSES, "gtsrb")
