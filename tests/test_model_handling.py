"""Model loading and scanning leave models and flags as the user expects."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuralcleanse.data import ImageDataset, Preprocessing
from neuralcleanse.detection import NeuralCleanse, ReverseConfig, ScanPlan, TriggerReverseEngineer
from neuralcleanse.errors import InputError
from neuralcleanse.models import Classifier, ModelInfo, build_architecture, load_model, save_checkpoint


def _model(prep: Preprocessing) -> Classifier:
    torch.manual_seed(0)
    info = ModelInfo(num_classes=4, input_shape=(3, 8, 8), preprocessing=prep, arch="tiny",
                     arch_kwargs={"num_classes": 4, "in_channels": 3, "image_size": [8, 8]})
    return Classifier(build_architecture("tiny", **info.arch_kwargs), info)


def test_flag_overrides_only_the_given_field(tmp_path: Path) -> None:
    path = save_checkpoint(_model(Preprocessing(pixel_scale=255.0, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))),
                           tmp_path / "m.pt")
    loaded = load_model(path, preprocessing_overrides={"channel_order": "bgr"})
    assert loaded.info.preprocessing == Preprocessing(255.0, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), "bgr")
    # An explicit value equal to the default still replaces the checkpoint's.
    assert load_model(path, preprocessing_overrides={"pixel_scale": 1.0}).info.preprocessing.pixel_scale == 1.0
    assert load_model(path).info.preprocessing.pixel_scale == 255.0


def test_damaged_archive_is_bad_input(tmp_path: Path) -> None:
    good = save_checkpoint(_model(Preprocessing()), tmp_path / "m.pt").read_bytes()
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good[:200] + b"\0" * 64 + good[-200:])  # keeps the end-of-archive record
    with pytest.raises(InputError):
        load_model(damaged)


def test_scan_leaves_the_model_trainable() -> None:
    model = _model(Preprocessing())
    gen = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(40, 3, 8, 8, generator=gen), torch.arange(40) % 4, 4)
    plan = ScanPlan(config=ReverseConfig(max_steps=2, samples_per_step=8, batch_size=8), samples=40)
    NeuralCleanse(plan, progress=False, block_size=2).scan(model, data)
    assert all(p.requires_grad for p in model.parameters())


def test_step_limit_zero_does_nothing() -> None:
    model = _model(Preprocessing())
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 4
    engine = TriggerReverseEngineer(model, x, y, 4, ReverseConfig(max_steps=5, samples_per_step=8, batch_size=8),
                                    block_size=2)
    engine.run(range(4), step_limit=0)
    assert engine.passes == 0
    assert engine.state.tensors["steps"].tolist() == [0, 0, 0, 0]
