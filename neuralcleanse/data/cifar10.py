"""CIFAR-10 (Krizhevsky, 2009): 10 classes of natural 32×32 colour images, in the official layout users
download, `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/` folder, or an .npz.

The official batches are Python pickles. Unpickling a file can run code, so they are read with an unpickler
that builds only what the format holds (dicts, lists, bytes, numbers and numpy arrays) and refuses anything
else: a tampered batch is an error, never code run.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.data.cache import load_cached, save_cached
from neuralcleanse.data.dataset import DatasetSplits, ImageDataset, to_nchw_unit
from neuralcleanse.data.npz import read_npz_splits
from neuralcleanse.data.locate import default_source
from neuralcleanse.errors import InputError

NUM_CLASSES = 10
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ENV_VAR = "NEURALCLEANSE_CIFAR10"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_SHARED_NPZ = Path("..") / "shared" / "data" / "cifar10" / "cifar10_jpeg_30k.npz"
_MAX_BATCH_BYTES = 256 * 2**20  # an official batch is 31 MB
_CACHE_VERSION = 1
_WHERE_TO_GET = (
    "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and pass it (or its "
    f"extracted cifar-10-batches-py folder), or set ${ENV_VAR} to either, or to an .npz with "
    "x_train, y_train, x_test, y_test (uint8 NHWC RGB)"
)
# What an official batch's pickle may build: numpy arrays and their dtypes, and bytes (protocol 2 spells them as
# a call of codecs.encode). Everything else is refused.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a CIFAR-10 batch holds no {module}.{name}")


def load_cifar10(source: str | Path | None = None) -> DatasetSplits:
    """The 50,000 training and 10,000 test images (or what an .npz holds), as raw [0,1] pixels, NCHW."""
    path = _default_source() if source is None else Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".npz":
        return read_npz_splits(path, num_classes=NUM_CLASSES, name="cifar10", require_splits=True)
    if path.is_file() and (path.name.endswith(".tar.gz") or path.suffix.lower() in (".tgz", ".tar")):
        return _splits(_cached(path, lambda: _from_tarball(path)))
    if path.is_dir():
        folder = find_batches(path)
        if folder is None:
            raise InputError(f"{path} holds no CIFAR-10 batches ({', '.join(TRAIN_BATCHES)}, {TEST_BATCH}); "
                             f"{_WHERE_TO_GET}")
        return _splits(_cached(folder, lambda: _from_folder(folder)))
    if not path.exists():
        raise InputError(f"CIFAR-10 source {path} does not exist; {_WHERE_TO_GET}")
    raise InputError(f"CIFAR-10 source {path} is not an .npz, the official tarball or its folder; {_WHERE_TO_GET}")


def find_batches(folder: Path) -> Path | None:
    """The folder holding the official batches: `folder` itself or its `cifar-10-batches-py`."""
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if all((candidate / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
            return candidate
    return None


def is_cifar10_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".tar.gz", ".tgz")) and "cifar" in path.name.lower()


def read_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels (N,)) from one official batch's bytes."""
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # unpickling a damaged or foreign file fails in many ways
        raise InputError(f"{where} is not a CIFAR-10 batch ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise InputError(f"{where} is not a CIFAR-10 batch (no data and labels in it)")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise InputError(f"{where} is not a CIFAR-10 batch (data of shape {data.shape} and dtype {data.dtype})")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise InputError(f"{where} has labels outside 0..{NUM_CLASSES - 1}")
    # Rows hold the red, then green, then blue plane of a 32×32 image, row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _from_folder(folder: Path) -> dict[str, np.ndarray]:
    parts = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        path = folder / name
        if path.stat().st_size > _MAX_BATCH_BYTES:
            raise InputError(f"{path} is larger than any CIFAR-10 batch")
        parts[name] = read_batch(path.read_bytes(), str(path))
    return _join(parts)


def _from_tarball(path: Path) -> dict[str, np.ndarray]:
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                name = Path(member.name).name
                if name in (*TRAIN_BATCHES, TEST_BATCH) and member.isfile():
                    if member.size > _MAX_BATCH_BYTES:
                        raise InputError(f"{path}: {member.name} is larger than any CIFAR-10 batch")
                    parts[name] = read_batch(tar.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {path} as the CIFAR-10 tarball ({exc}); download it again") from None
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in parts]
    if missing:
        raise InputError(f"{path} lacks the CIFAR-10 batch(es) {', '.join(missing)}; {_WHERE_TO_GET}")
    return _join(parts)


def _join(parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    return {"x_train": np.concatenate([parts[n][0] for n in TRAIN_BATCHES]),
            "y_train": np.concatenate([parts[n][1] for n in TRAIN_BATCHES]),
            "x_test": parts[TEST_BATCH][0], "y_test": parts[TEST_BATCH][1]}


def _cached(source: Path, decode) -> dict[str, np.ndarray]:
    """Decoded arrays, cached by the source's path, size and time (a changed file is decoded again)."""
    stat = source.stat()
    ident = f"{source.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    key = f"cifar10-v{_CACHE_VERSION}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.npz"
    keys = ("x_train", "y_train", "x_test", "y_test")
    arrays = load_cached(key, keys)
    if arrays is None:
        arrays = decode()
        save_cached(key, arrays)
    return arrays


def _splits(arrays: dict[str, np.ndarray]) -> DatasetSplits:
    def split(x: np.ndarray, y: np.ndarray, name: str) -> ImageDataset:
        import torch

        return ImageDataset(to_nchw_unit(x), torch.as_tensor(y, dtype=torch.long), NUM_CLASSES, name)

    return DatasetSplits(split(arrays["x_train"], arrays["y_train"], "cifar10-train"),
                         split(arrays["x_test"], arrays["y_test"], "cifar10-test"))


def _default_source() -> Path:
    return default_source(ENV_VAR, _SHARED_NPZ, "CIFAR-10", _WHERE_TO_GET)