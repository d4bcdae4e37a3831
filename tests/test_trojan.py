"""The Trojan attack: neuron selection, trigger generation, retraining from a layer, reverse-engineered
data, the trigger file and the `attack trojan` command, on tiny models."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cli_helpers import NUM_CLASSES, SIDE, assert_bad_input, invoke, write_npz
from neuralcleanse.attacks import TrojanAttack, patch_trigger
from neuralcleanse.attacks.reverse_data import reverse_engineer_data
from neuralcleanse.data.trigger import Trigger
from neuralcleanse.attacks.trigger_files import read_trigger_file, trigger_file_path, write_trigger_file
from neuralcleanse.attacks.trojan import retrain_from_layer
from neuralcleanse.attacks.trojan_trigger import (generate_trigger, neuron_scores, resolve_trojan_layer,
                                                  select_neurons, trojan_mask)
from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import attack_success_rate
from neuralcleanse.data.trigger import known_backdoors
from neuralcleanse.models.classifier import Classifier, ModelInfo
from tiny_task import K, SIDE as TINY_SIDE

SHAPE = (1, TINY_SIDE, TINY_SIDE)


def hand_made() -> Classifier:
    """Flatten -> Linear(4, 3) -> ReLU -> Linear(3, 2), weights set by hand: unit 1 has the largest
    summed |incoming| weights (1+2+3+4 = 10, against 4 and 6), unit 2 the largest |outgoing| ones."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, -2.0, 3.0, -4.0], [0.5, 0.5, -2.5, 2.5]]))
        net[1].bias.zero_()
        net[3].weight.copy_(torch.tensor([[0.1, -0.2, 3.0], [0.1, 0.2, -2.0]]))
    return Classifier(net, ModelInfo(num_classes=2, input_shape=(1, 2, 2)))


def test_neuron_selection_by_summed_absolute_weights() -> None:
    model = hand_made()
    assert resolve_trojan_layer(model, None, (1, 2, 2)) == "1"  # the first dense layer
    torch.testing.assert_close(neuron_scores(model, "1", (1, 2, 2)), torch.tensor([4.0, 10.0, 6.0]))
    assert select_neurons(model, "1", 1, (1, 2, 2)) == [1]
    assert select_neurons(model, "1", 2, (1, 2, 2)) == [1, 2]
    # The released code's side: the next layer's weights reading each unit (0.2, 0.4, 5.0).
    assert select_neurons(model, "1", 1, (1, 2, 2), side="outgoing") == [2]
    # An activation layer ranks its units by the weights into the dense layer before it.
    assert select_neurons(model, "2", 1, (1, 2, 2)) == [1]
    with pytest.raises(InputError, match="neurons"):
        select_neurons(model, "1", 4, (1, 2, 2))


def test_outgoing_weights_of_a_flattened_convolution() -> None:
    """A dense layer reading a flattened convolution: each channel's columns are summed together."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(8, 1))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[0.1, 0.1, 0.1, 0.1, 1.0, -1.0, 1.0, 1.0]]))
    model = Classifier(net, ModelInfo(num_classes=1, input_shape=(1, 2, 2)))
    torch.testing.assert_close(neuron_scores(model, "0", (1, 2, 2), "outgoing"), torch.tensor([0.4, 4.0]))


def test_layer_names_and_masks() -> None:
    model = hand_made()
    assert resolve_trojan_layer(model, "net.3", (1, 2, 2)) == "3"
    with pytest.raises(InputError, match=r"unknown `layer` 'fc9'.*1 \(Linear\)"):
        resolve_trojan_layer(model, "fc9", (1, 2, 2))
    default = trojan_mask(None, (1, 28, 28))
    assert default.sum() == 36 and default[21:27, 21:27].all()  # 6 px, bottom-right, 1 px from the border
    assert trojan_mask(None, (3, 32, 32)).sum() == 49  # 7 px on GTSRB
    assert trojan_mask("square:3@2,4", (1, 8, 8))[2:5, 4:7].all()
    for bad in ("circle:3", "square:x@top", "square:9@top-left", "image:/nonexistent.png"):
        with pytest.raises(InputError, match="mask"):
            trojan_mask(bad, (1, 8, 8))


def test_image_mask_from_alpha(tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[1:4, 2:7] = (255, 0, 0, 255)  # an opaque red bar; everything else transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    mask = trojan_mask(f"image:{tmp_path / 'logo.png'}", (1, 8, 8))
    expected = torch.zeros(8, 8)
    expected[1:4, 2:7] = 1
    torch.testing.assert_close(mask, expected)


def test_trigger_raises_the_neuron_and_stays_inside_the_mask(clean_model) -> None:
    layer = resolve_trojan_layer(clean_model, None, SHAPE)
    neurons = select_neurons(clean_model, layer, 2, SHAPE)
    mask = trojan_mask("square:3@top-left", SHAPE)
    made = generate_trigger(clean_model, layer, neurons, mask, SHAPE, steps=100)
    assert all(after > before + 0.5 for before, after in zip(made.activation_before, made.activation_after))
    pattern = made.trigger.pattern
    assert float(pattern[:, mask == 0].abs().max()) == 0.0
    assert 0.0 <= float(pattern.min()) and float(pattern.max()) <= 1.0
    torch.testing.assert_close(made.trigger.mask, mask)


def test_retraining_changes_only_the_layers_from_the_chosen_one(clean_model, data) -> None:
    before = copy.deepcopy(clean_model.state_dict())
    result = TrojanAttack(seed=0).attack(clean_model, data, target=3)
    trojaned = result.model.state_dict()
    assert result.layer == "3" and result.trainable_parameters == ["3.weight", "3.bias", "5.weight", "5.bias"]
    for name in ("net.0.weight", "net.0.bias"):  # the convolution before the layer: bit-identical
        assert torch.equal(trojaned[name], before[name]), name
    for name in ("net.3.weight", "net.5.weight"):
        assert not torch.equal(trojaned[name], before[name]), name
    # The source model is left as it was, and the attack worked without costing clean accuracy.
    assert all(torch.equal(v, before[k]) for k, v in clean_model.state_dict().items())
    assert result.attack_success_before < 0.2 and result.attack_success > 0.9
    assert result.clean_accuracy_after > result.clean_accuracy_before - 0.05
    assert attack_success_rate(result.model, data.test, result.trigger, 3) == pytest.approx(result.attack_success)
    # Its metadata carries the backdoor as a BadNets model's does.
    [backdoor] = known_backdoors(result.model.info.metadata)
    assert backdoor.target == 3 and torch.equal(backdoor.trigger.mask, result.trigger.mask)


def test_frozen_layers_keep_batch_norm_statistics_and_weights() -> None:
    """Layers before the chosen one keep weights and buffers (eval mode: no running-statistics update)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(4 * 16, 8), nn.ReLU(), nn.Linear(8, 3))
    model = Classifier(net, ModelInfo(num_classes=3, input_shape=(1, 4, 4)))
    before = copy.deepcopy(net.state_dict())
    data = ImageDataset(torch.rand(60, 1, 4, 4), torch.arange(3).repeat(20), 3)
    _, trainable = retrain_from_layer(model, "5", data, patch_trigger((1, 4, 4), 2, "top-left", margin=0), 0,
                                      epochs=2, lr=0.05)
    assert trainable == ["5.weight", "5.bias", "7.weight", "7.bias"]
    after = net.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["5.weight"], before["5.weight"])
    assert all(p.requires_grad for p in model.parameters())  # given back trainable


def test_reverse_engineered_data_raises_each_label_score(clean_model) -> None:
    rev = reverse_engineer_data(clean_model, K, SHAPE, per_label=4, steps=60, seed=1)
    assert len(rev.data) == 4 * K and rev.data.y.tolist() == [k for k in range(K) for _ in range(4)]
    assert bool((rev.score_after > rev.score_before + 0.2).all()), (rev.score_before, rev.score_after)
    assert 0.0 <= float(rev.data.x.min()) and float(rev.data.x.max()) <= 1.0
    with torch.no_grad():
        assert (clean_model(rev.data.x).argmax(1) == rev.data.y).float().mean() > 0.9


def test_reverse_data_attack(clean_model, data) -> None:
    result = TrojanAttack(data="reverse", reverse_per_label=10, reverse_steps=60).attack(clean_model, data, 1)
    assert result.retrain_data == "reverse" and result.retrain_samples == 10 * K
    assert result.attack_success > 0.9
    assert min(result.reversed_scores["after"]) > max(result.reversed_scores["before"])


def test_trigger_file_round_trip(tmp_path: Path) -> None:
    assert trigger_file_path(tmp_path / "model.pt") == tmp_path / "model.trigger.npz"
    g = torch.Generator().manual_seed(0)
    one = Trigger((torch.rand(5, 6, generator=g) > 0.5).float(), torch.rand(3, 5, 6, generator=g))
    two = Trigger(torch.rand(5, 6, generator=g), torch.rand(3, 5, 6, generator=g))
    path = write_trigger_file(tmp_path / "a.trigger.npz", [one], [4], attack="trojan")
    with np.load(path) as npz:
        assert npz["mask"].shape == (1, 5, 6) and npz["pattern"].shape == (3, 5, 6) and int(npz["target"]) == 4
        assert npz["target"].shape == () and str(npz["attack"]) == "trojan"
    [back], targets = read_trigger_file(path, (3, 5, 6))
    assert targets == [4] and torch.equal(back.mask, one.mask) and torch.equal(back.pattern, one.pattern)
    path = write_trigger_file(tmp_path / "b.trigger.npz", [one, two], [4, 1], attack="badnets", source_labels=[0, 2])
    with np.load(path) as npz:
        assert npz["mask"].shape == (2, 1, 5, 6) and npz["pattern"].shape == (2, 3, 5, 6)
        assert npz["target"].tolist() == [4, 1] and npz["source_labels"].tolist() == [0, 2]
    back2, targets = read_trigger_file(path)
    assert targets == [4, 1] and torch.equal(back2[1].mask, two.mask) and torch.equal(back2[1].pattern, two.pattern)
    with pytest.raises(InputError, match="images are 1x5x6"):
        read_trigger_file(path, (1, 5, 6))


@pytest.fixture(scope="module")
def tiny_clean(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("trojan_cli")
    npz = write_npz(folder / "d.npz")
    model = folder / "clean.pt"
    result = invoke("train", "--dataset", str(npz), "--arch", "tiny", "--epochs", "8", "--lr", "5e-3", "--out", str(model))
    assert result.exit_code == 0, result.output
    return npz, model


def test_attack_trojan_cli_writes_model_and_trigger(tiny_clean, tmp_path: Path) -> None:
    npz, model = tiny_clean
    out = tmp_path / "trojan.pt"
    result = invoke("attack", "trojan", str(model), "--data", str(npz), "--target", "2", "--out", str(out),
                    "--mask", "square:3@top-left", "--neurons", "2")
    assert result.exit_code == 0, result.output
    assert "attack success (trigger -> label 2)" in result.stdout and "clean accuracy" in result.stdout
    with np.load(trigger_file_path(out)) as npz_file:
        mask, pattern, target = npz_file["mask"], npz_file["pattern"], npz_file["target"]
    assert mask.shape == (1, SIDE, SIDE) and pattern.shape == (1, SIDE, SIDE) and int(target) == 2
    assert mask[0, 1:4, 1:4].all() and mask.sum() == 9
    assert 0 <= pattern.min() and pattern.max() <= 1 and not pattern[mask == 0].any()
    from neuralcleanse.models import load_model

    trojaned = load_model(out)
    assert trojaned.info.metadata["backdoor"]["attack"] == "trojan"
    assert trojaned.info.metadata["backdoor"]["targets"] == [2]
    [backdoor] = known_backdoors(trojaned.info.metadata)
    np.testing.assert_array_equal(backdoor.trigger.mask.numpy(), mask[0])
    from neuralcleanse.data import load_dataset

    test = load_dataset(str(npz)).test
    assert attack_success_rate(trojaned, test, backdoor.trigger, 2) > 0.9
    assert out.with_suffix(".json").is_file()


def test_attack_trojan_cli_bad_input(tiny_clean, tmp_path: Path) -> None:
    npz, model = tiny_clean
    out = tmp_path / "t.pt"
    base = ["attack", "trojan", str(model), "--data", str(npz), "--out", str(out)]
    assert_bad_input(invoke(*base, "--target", "1", "--layer", "fc9"), "unknown --layer 'fc9'", "3 (Linear)")
    assert_bad_input(invoke(*base, "--target", "1", "--mask", "circle:4"), "unknown --mask")
    assert_bad_input(invoke(*base, "--target", "1", "--mask", "square:20@center"), "--mask", "does not fit")
    assert_bad_input(invoke(*base, "--target", "9"), "--target must lie in 0..3")
    assert_bad_input(invoke(*base, "--target", "1", "--neurons", "99"), "--neurons must lie in 1..32")
    assert not out.exists() and not trigger_file_path(out).exists()


def test_train_attack_trojan(tiny_clean, tmp_path: Path) -> None:
    npz, _ = tiny_clean
    out = tmp_path / "tj.pt"
    result = invoke("train", "--dataset", str(npz), "--arch", "tiny", "--epochs", "8", "--lr", "5e-3",
                    "--attack", "trojan", "--target", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "attack success (trigger -> label 3)" in result.stdout
    [trigger], [target] = read_trigger_file(trigger_file_path(out), (1, SIDE, SIDE))
    assert target == 3 and trigger.mask.sum() == 4  # the default square: 2 px on 8x8 images
    assert_bad_input(invoke("train", "--dataset", str(npz), "--arch", "tiny", "--attack", "trojan",
                            "--trigger-size", "3", "--out", str(tmp_path / "x.pt")), "--trigger-size applies to --attack badnets")
    assert_bad_input(invoke("train", "--dataset", str(npz), "--arch", "tiny", "--layer", "3",
                            "--out", str(tmp_path / "x.pt")), "--layer applies to --attack trojan")
    assert NUM_CLASSES == 4
