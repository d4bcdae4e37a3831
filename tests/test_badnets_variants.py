"""BadNets variants: source-specific poisoning, several targets, several triggers per target, triggers
from files, and the trigger file `train` writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import NUM_CLASSES, SIDE, assert_bad_input, invoke, write_npz
from neuralcleanse.attacks import BadNets, patch_trigger
from neuralcleanse.attacks.trigger_files import make_patch_trigger, read_trigger_file, trigger_file_path
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import attack_success_rate
from neuralcleanse.training import train_model
from tiny_task import K, SIDE as TINY_SIDE, synthetic

SHAPE = (1, TINY_SIDE, TINY_SIDE)
TOP_LEFT = patch_trigger(SHAPE, 2, "top-left")
BOTTOM_RIGHT = patch_trigger(SHAPE, 2, "bottom-right")


def test_source_specific_poisoning_touches_only_source_labels() -> None:
    data = synthetic(100, seed=3)
    bn = BadNets([BOTTOM_RIGHT], [4], poison_rate=0.2, seed=1, source_labels=[0, 1], cover_rate=0.1)
    poisoned = bn.poison(data)
    [idx] = bn.poisoned_indices
    [cover] = bn.cover_indices
    assert len(idx) == round(0.2 * 200) and len(cover) == round(0.1 * 400)
    assert set(data.y[idx].tolist()) <= {0, 1} and bool((poisoned.y[idx] == 4).all())
    assert not set(data.y[cover].tolist()) & {0, 1} and torch.equal(poisoned.y[cover], data.y[cover])
    torch.testing.assert_close(poisoned.x[cover], BOTTOM_RIGHT.apply(data.x[cover]))
    torch.testing.assert_close(poisoned.x[idx], BOTTOM_RIGHT.apply(data.x[idx]))
    untouched = torch.ones(len(data), dtype=torch.bool)
    untouched[idx] = untouched[cover] = False
    assert torch.equal(poisoned.x[untouched], data.x[untouched]) and torch.equal(poisoned.y[untouched], data.y[untouched])
    with pytest.raises(InputError, match="source_labels.*target"):
        BadNets([BOTTOM_RIGHT], [4], source_labels=[4, 1])
    with pytest.raises(InputError, match="cover_rate"):
        BadNets([BOTTOM_RIGHT], [4], cover_rate=0.1)


def test_source_specific_backdoor_spares_other_labels(data) -> None:
    bn = BadNets([BOTTOM_RIGHT], [4], poison_rate=0.2, source_labels=[0, 1])
    model, report = train_model(data, "tiny", badnets=bn, epochs=8, lr=5e-3, batch_size=64, progress=False)
    assert report.attack_success[0] > 0.9
    assert report.non_source_attack_success[0] < 0.1
    assert report.attack_success[0] == pytest.approx(
        attack_success_rate(model, data.test, BOTTOM_RIGHT, 4, labels=[0, 1]))
    assert model.info.metadata["backdoor"]["source_labels"] == [0, 1]


@pytest.mark.parametrize("targets", [[1, 4], [4, 4]], ids=["two targets", "two triggers for one target"])
def test_several_triggers(data, targets: list[int]) -> None:
    bn = BadNets([TOP_LEFT, BOTTOM_RIGHT], targets, poison_rate=0.1)
    model, report = train_model(data, "tiny", badnets=bn, epochs=8, lr=5e-3, batch_size=64, progress=False)
    assert report.clean_accuracy > 0.9
    assert report.attack_success[0] > 0.9 and report.attack_success[1] > 0.9
    # Each trigger sends inputs to its own target, not to the other's.
    if targets[0] != targets[1]:
        assert attack_success_rate(model, data.test, TOP_LEFT, targets[1]) < 0.1
        assert attack_success_rate(model, data.test, BOTTOM_RIGHT, targets[0]) < 0.1
    a, b = bn.poisoned_indices
    assert not set(a.tolist()) & set(b.tolist())


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("variants") / "d.npz")


def train(npz: Path, out: Path, *extra: str):
    return invoke("train", "--dataset", str(npz), "--arch", "tiny", "--epochs", "8", "--lr", "5e-3", "--out", str(out),
                  *extra)


def test_train_writes_the_triggers_it_used(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "two.pt"
    result = train(npz, out, "--target", "1", "--target", "3", "--trigger-size", "2",
                   "--trigger-position", "top-left", "--trigger-position", "bottom-right", "--trigger-colour", "0.8")
    assert result.exit_code == 0, result.output
    assert "trigger 0 -> label 1" in result.stdout and "trigger 1 -> label 3" in result.stdout
    with np.load(trigger_file_path(out)) as f:
        assert f["mask"].shape == (2, 1, SIDE, SIDE) and f["pattern"].shape == (2, 1, SIDE, SIDE)
        assert f["target"].tolist() == [1, 3]
        masks, patterns = f["mask"], f["pattern"]
    for i, position in enumerate(("top-left", "bottom-right")):
        expected = make_patch_trigger((1, SIDE, SIDE), 2, position, (0.8,))
        np.testing.assert_array_equal(masks[i, 0], expected.mask.numpy())
        np.testing.assert_allclose(patterns[i], expected.pattern.numpy())
    from neuralcleanse.models import load_model

    meta = load_model(out).info.metadata["backdoor"]
    assert meta["targets"] == [1, 3]
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(meta["triggers"][i]["pattern"]), patterns[i])


def test_train_several_triggers_one_target(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.pt"
    result = train(npz, out, "--target", "2", "--trigger-size", "2", "--trigger-position", "top-left",
                   "--trigger-position", "bottom-right")
    assert result.exit_code == 0, result.output
    triggers, targets = read_trigger_file(trigger_file_path(out), (1, SIDE, SIDE))
    assert targets == [2, 2] and len(triggers) == 2


def test_train_from_trigger_file_and_source_labels(npz: Path, tmp_path: Path) -> None:
    mask = np.zeros((1, SIDE, SIDE), np.float32)
    mask[0, 0, :] = mask[0, :, 0] = 1  # an L along the top and left borders
    pattern = np.where(mask > 0, 0.9, 0.0).astype(np.float32)
    np.savez(tmp_path / "l.npz", mask=mask, pattern=pattern)
    out = tmp_path / "src.pt"
    result = train(npz, out, "--trigger-file", str(tmp_path / "l.npz"), "--target", "1", "--source-labels", "0,2",
                   "--poison-rate", "0.3")
    assert result.exit_code == 0, result.output
    assert "on source labels [0, 2]" in result.stdout and "on the other labels" in result.stdout
    with np.load(trigger_file_path(out)) as f:
        np.testing.assert_array_equal(f["mask"], mask)
        np.testing.assert_array_equal(f["pattern"], pattern)
        assert int(f["target"]) == 1 and f["source_labels"].tolist() == [0, 2]
    import json

    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["attack_success"]["0"] > 0.9 and summary["non_source_attack_success"]["0"] < 0.2


def test_trigger_file_from_an_image(npz: Path, tmp_path: Path) -> None:
    from PIL import Image

    grey = np.zeros((SIDE, SIDE), np.uint8)
    grey[2:6, 3] = 255  # a bright bar on black: the bright pixels are the mask
    Image.fromarray(grey, "L").save(tmp_path / "bar.png")
    out = tmp_path / "img.pt"
    result = train(npz, out, "--trigger-file", str(tmp_path / "bar.png"), "--target", "0")
    assert result.exit_code == 0, result.output
    [trigger], [target] = read_trigger_file(trigger_file_path(out), (1, SIDE, SIDE))
    assert target == 0 and trigger.mask.sum() == 4 and trigger.mask[2:6, 3].all()


def test_bad_trigger_options(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.pt"
    ok_mask = np.ones((SIDE, SIDE), np.float32)
    np.savez(tmp_path / "range.npz", mask=ok_mask, pattern=np.full((1, SIDE, SIDE), 2.0, np.float32))
    np.savez(tmp_path / "shape.npz", mask=np.ones((5, 5), np.float32), pattern=np.ones((1, SIDE, SIDE), np.float32))
    np.savez(tmp_path / "size.npz", mask=np.ones((4, 4), np.float32), pattern=np.ones((1, 4, 4), np.float32))
    np.savez(tmp_path / "nopattern.npz", mask=ok_mask)
    np.savez(tmp_path / "notarget.npz", mask=ok_mask, pattern=np.ones((1, SIDE, SIDE), np.float32))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases = [
        (["--trigger-file", str(tmp_path / "range.npz"), "--target", "1"], "must be finite and lie in [0, 1]"),
        (["--trigger-file", str(tmp_path / "shape.npz"), "--target", "1"], "do not fit"),
        (["--trigger-file", str(tmp_path / "size.npz"), "--target", "1"], "but the images are 1x8x8"),
        (["--trigger-file", str(tmp_path / "nopattern.npz"), "--target", "1"], "no 'pattern' array"),
        (["--trigger-file", str(tmp_path / "notarget.npz")], "give --target"),
        (["--trigger-file", str(tmp_path / "junk.npz"), "--target", "1"], "cannot read trigger file"),
        (["--trigger-file", str(tmp_path / "notarget.npz"), "--target", "1", "--trigger-size", "3"], "drop --trigger-size"),
        (["--target", "1", "--target", "2"], "triggers 0 and 1 are the same"),
        (["--target", "1", "--target", "2", "--trigger-position", "top-left", "--trigger-position", "center",
          "--trigger-position", "bottom-right"], "--target is given 2 times but there are 3 triggers"),
        (["--target", "1", "--source-labels", "1,2"], "--source-labels include the target"),
        (["--target", "1", "--source-labels", "0,7"], "--source-labels must lie in 0..3"),
        (["--target", "1", "--cover-rate", "0.2"], "--cover-rate only applies"),
        (["--target", "1", "--trigger-position", "middle"], "unknown position 'middle'"),
        (["--target", "1", "--target", "2", "--trigger-position", "top-left", "--trigger-position", "center",
          "--poison-rate", "0.6"], "--poison-rate 0.6 × 2 triggers exceeds the dataset"),
        (["--badnets", "--attack", "trojan"], "contradicts"),
    ]
    for args, message in cases:
        assert_bad_input(train(npz, out, *args), message)
    assert not out.exists() and not trigger_file_path(out).exists()
    assert NUM_CLASSES == 4 and K == 6


def test_additive_trigger_poisons_and_is_stored(data) -> None:
    """A trigger outside the mask form poisons like any other and comes back from the checkpoint."""
    from neuralcleanse.attacks import AdditiveTrigger, frequency_trigger
    from neuralcleanse.mitigation import known_backdoors

    trig = frequency_trigger(SHAPE, frequencies=((TINY_SIDE - 1, TINY_SIDE - 1),), amplitude=0.3)
    bn = BadNets([trig], [2], poison_rate=0.2, seed=0)
    poisoned = bn.poison(data.train)
    [idx] = bn.poisoned_indices
    torch.testing.assert_close(poisoned.x[idx], (data.train.x[idx] + trig.delta).clamp(0, 1))
    assert bool((poisoned.y[idx] == 2).all())
    model, report = train_model(data, "tiny", badnets=bn, epochs=8, lr=5e-3, batch_size=64, progress=False)
    [stored] = known_backdoors(model.info.metadata)
    assert isinstance(stored.trigger, AdditiveTrigger) and torch.equal(stored.trigger.delta, trig.delta)
    assert report.attack_success[0] == pytest.approx(attack_success_rate(model, data.test, stored.trigger, 2))
