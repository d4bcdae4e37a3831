"""Folders of image files: class sub-folders, train/test splits, resizing, and unlabelled images."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import NUM_CLASSES, SIDE, TARGET, assert_bad_input, invoke, train_tiny, write_npz
from neuralcleanse.cli import EXIT_CLEAN, EXIT_INFECTED
from neuralcleanse.data import load_dataset

SCAN = ("--samples", "200", "--block-size", "1")


def export_folder(npz: Path, root: Path, split_dirs: bool, scale: int = 1, flat: bool = False) -> Path:
    """The npz's images as PNG files, `scale` times larger (so loading must resize them)."""
    with np.load(npz) as z:
        splits = {"train": (z["x_train"], z["y_train"]), "test": (z["x_test"], z["y_test"])}
    for split, (x, y) in splits.items():
        if not split_dirs and split == "train":
            continue
        base = root / split if split_dirs else root
        for i, (img, label) in enumerate(zip(x, y)):
            folder = base if flat else base / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((SIDE * scale, SIDE * scale), Image.NEAREST).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("folders")
    npz = write_npz(work / "data.npz")
    model = work / "m.pt"
    train_tiny(npz, model)
    return work, npz, model


def test_loader_reads_class_folders_and_splits(setup, tmp_path) -> None:
    _, npz, _ = setup
    root = export_folder(npz, tmp_path / "imgs", split_dirs=True)
    data = load_dataset(root)
    with np.load(npz) as z:
        assert len(data.train) == len(z["y_train"]) and len(data.test) == len(z["y_test"])
        assert sorted(data.test.y.tolist()) == sorted(z["y_test"].tolist())
    assert data.test.input_shape == (1, SIDE, SIDE) and data.test.num_classes == NUM_CLASSES
    big = export_folder(npz, tmp_path / "big", split_dirs=False, scale=3)
    resized = load_dataset(big, image_size=(SIDE, SIDE))
    assert resized.test.input_shape == (1, SIDE, SIDE)
    assert load_dataset(big).test.input_shape == (1, 3 * SIDE, 3 * SIDE)
    assert load_dataset(big, image_size=(SIDE, SIDE), channels=3).test.input_shape == (3, SIDE, SIDE)


@pytest.mark.slow
def test_image_folder_scans_like_the_npz(setup, tmp_path) -> None:
    _, npz, model = setup
    folder = export_folder(npz, tmp_path / "imgs", split_dirs=False, scale=2)  # resized back to 8x8
    reports = []
    for name, data in (("npz", npz), ("folder", folder)):
        result = invoke("scan", str(model), "--data", str(data), "--out", str(tmp_path / name), *SCAN)
        assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    assert reports[0]["flagged"] == reports[1]["flagged"] and TARGET in reports[1]["flagged"]


@pytest.mark.slow
def test_unlabelled_folder_needs_labels_from_model(setup, tmp_path, caplog) -> None:
    _, npz, model = setup
    flat = export_folder(npz, tmp_path / "flat", split_dirs=False, flat=True)
    assert_bad_input(invoke("scan", str(model), "--data", str(flat), "--out", str(tmp_path / "o"), *SCAN),
                     "no labels", "--labels-from-model")
    with caplog.at_level("WARNING", logger="neuralcleanse"):
        result = invoke("scan", str(model), "--data", str(flat), "--out", str(tmp_path / "o"), "--labels-from-model",
                        *SCAN)
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
    assert "model's own predictions" in caplog.text
    assert TARGET in json.loads((tmp_path / "o" / "report.json").read_text())["flagged"]


def test_folder_errors(setup, tmp_path) -> None:
    _, _, model = setup
    (tmp_path / "empty").mkdir()
    assert_bad_input(invoke("scan", str(model), "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
                     "neither")
    bad = tmp_path / "bad" / "class_0"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not a png")
    assert_bad_input(invoke("scan", str(model), "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "o")),
                     "cannot read image")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels and holds none: Pillow judges the size on opening."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_image_is_bad_input(setup, tmp_path) -> None:
    """An image declaring more pixels than Pillow will decode (20000 x 20000) is one error line."""
    _, npz, model = setup
    folder = export_folder(npz, tmp_path / "imgs", split_dirs=False)
    victim = sorted((folder / "class_00").glob("*.png"))[0]
    victim.write_bytes(_png_header_only(20000, 20000))
    assert_bad_input(invoke("scan", str(model), "--data", str(folder), "--out", str(tmp_path / "o"), *SCAN),
                     victim.name)
