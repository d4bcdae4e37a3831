"""Datasets in raw pixel space and the preprocessing spec that travels with a model."""
from neuralcleanse.data.dataset import DatasetSplits, ImageDataset, to_nchw_unit
from neuralcleanse.data.gtsrb import load_gtsrb
from neuralcleanse.data.mnist import load_mnist
from neuralcleanse.data.npz import load_npz
from neuralcleanse.data.preprocessing import Preprocessing, PreprocessingLayer
from neuralcleanse.data.sources import load_dataset

__all__ = [
    "DatasetSplits",
    "ImageDataset",
    "Preprocessing",
    "PreprocessingLayer",
    "load_dataset",
    "load_gtsrb",
    "load_mnist",
    "load_npz",
    "to_nchw_unit",
]
