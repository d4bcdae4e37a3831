"""CIFAR-10 in the layout users download: the tarball and its folder, read without running pickled code."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralcleanse.data import load_dataset
from neuralcleanse.data.cifar10 import TEST_BATCH, TRAIN_BATCHES, load_cifar10
from neuralcleanse.errors import InputError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10" / "cifar10_jpeg_30k.npz"


def _batch(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    # The official encoding: rows of the red, then green, then blue plane, row-major; labels a list.
    rows = images.transpose(0, 3, 1, 2).reshape(n, -1)
    raw = pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": rows, b"filenames": [b"a"] * n}, protocol=2)
    return raw, images, np.asarray(labels)


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    truth = {}
    for i, name in enumerate((*TRAIN_BATCHES, TEST_BATCH)):
        raw, images, labels = _batch(6, i)
        (folder / name).write_bytes(raw)
        truth[name] = (images, labels)
    tarball = root / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return tarball, folder, truth


def test_tarball_and_folder_read_the_official_layout(official, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NEURALCLEANSE_CACHE", str(tmp_path / "cache"))
    tarball, folder, truth = official
    for source in (tarball, folder, folder.parent):
        data = load_dataset(str(source))
        assert data.train.num_classes == 10 and len(data.train) == 30 and len(data.test) == 6
        image, label = truth[TEST_BATCH][0][2], truth[TEST_BATCH][1][2]
        assert torch.allclose(data.test.x[2], torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        assert int(data.test.y[2]) == label
        assert torch.equal(data.train.y[6:12], torch.as_tensor(truth["data_batch_2"][1]))
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))  # decoded once, then read from the cache
    monkeypatch.setenv("NEURALCLEANSE_CIFAR10", str(tarball))
    assert len(load_dataset("cifar10").test) == 6


def test_a_batch_that_would_run_code_is_refused(official, tmp_path) -> None:
    _, folder, _ = official
    bad = tmp_path / "cifar-10-batches-py"
    bad.mkdir()
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        (bad / name).write_bytes((folder / name).read_bytes())

    class Boom:
        def __reduce__(self):
            return (print, ("code ran",))

    (bad / TEST_BATCH).write_bytes(pickle.dumps({b"data": Boom(), b"labels": []}))
    with pytest.raises(InputError, match="not a CIFAR-10 batch.*builtins.print"):
        load_cifar10(bad)
    (bad / TEST_BATCH).write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="not a CIFAR-10 batch"):
        load_cifar10(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no CIFAR-10 batches"):
        load_cifar10(tmp_path / "empty")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_file(), reason="../shared/data/cifar10 is not beside this checkout")
def test_shared_copy() -> None:
    data = load_cifar10(SHARED)
    assert data.train.input_shape == (3, 32, 32) and len(data.train) == 30000 and len(data.test) == 10000
    assert torch.bincount(data.test.y).tolist() == [1000] * 10


@pytest.mark.slow
def test_resnet20_trains_saves_and_scans_with_every_test(tmp_path) -> None:
    """The small ResNet: a checkpoint that rebuilds it, and a scan where the neuron-noise test runs on its
    batch-norm channels."""
    from neuralcleanse.data.dataset import DatasetSplits, ImageDataset
    from neuralcleanse.detection import NeuralCleanse
    from neuralcleanse.models import load_model, save_checkpoint
    from neuralcleanse.training import train_model

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(12)
    x = (torch.rand(10, 3, 32, 32, generator=gen)[y] * 0.6 + 0.2 * torch.rand(120, 3, 32, 32, generator=gen)).clamp(0, 1)
    data = DatasetSplits(ImageDataset(x, y, 10), ImageDataset(x, y, 10))
    model, report = train_model(data, "resnet20", epochs=2, lr=3e-3, progress=False)
    save_checkpoint(model, tmp_path / "r.pt")
    again = load_model(tmp_path / "r.pt")
    assert type(again.net).__name__ == "ResNet20" and again.num_classes == 10
    with torch.no_grad():
        assert torch.allclose(again(x[:4]), model.eval()(x[:4]), atol=1e-5)
    result = NeuralCleanse(samples=100, max_steps=4, progress=False).scan(again, data.test)
    assert result.evidence["noise"].ran and result.evidence["noise"].details["layers"] == "batch-norm"
    assert result.evidence["mmbd"].ran and result.combined is not None
