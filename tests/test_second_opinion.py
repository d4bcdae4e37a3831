"""The second-opinion tests: MM-BD's maximum margin and the neuron-noise test, on the tiny task."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from neuralcleanse.detection.evidence import Evidence, bonferroni_normal, largest_of_gamma
from neuralcleanse.detection.max_margin import MaxMargin
from neuralcleanse.detection.neuron_noise import NeuronNoise, pile_up
from neuralcleanse.errors import InputError
from neuralcleanse.models.neurons import Neurons, neuron_layers
from tiny_task import SIDE, TARGET

# The tiny net has no batch-norm: the test is forced onto its channels, with BAN's own noise level.
SMALL_NOISE = dict(batch=64, eval_samples=200, batch_norm_only=False, eps=0.3)


def test_max_margin_points_at_the_target_of_an_infected_model_only(infected, clean_model, data) -> None:
    model, _ = infected
    found = MaxMargin().test(model, data.test)
    assert found.candidate == TARGET and found.flagged and found.p_value < 0.01
    assert found.statistic == max(found.scores) and found.scores[TARGET] > 1.3 * np.median(found.scores)
    quiet = MaxMargin().test(clean_model, data.test)
    assert not quiet.flagged and quiet.p_value > 0.05


def test_neuron_noise_piles_an_infected_models_errors_onto_its_target(infected, clean_model, data) -> None:
    model, _ = infected
    found = NeuronNoise(**SMALL_NOISE).test(model, data.test)
    counts = found.details["counts"]
    assert found.candidate == TARGET and found.flagged
    assert counts[TARGET] > 0.5 * sum(counts)  # most of the wrong answers go to the target
    assert found.details["layers"] == "conv/dense"  # the tiny net has no batch-norm
    quiet = NeuronNoise(**SMALL_NOISE).test(clean_model, data.test)
    assert not quiet.flagged
    skipped = NeuronNoise().test(model, data.test)  # by default only networks with batch-norm
    assert not skipped.ran and "no batch-norm" in skipped.note


def test_tests_leave_the_model_as_it_was(data) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * SIDE * SIDE, 6)).train()
    before = copy.deepcopy(net.state_dict())
    NeuronNoise(**SMALL_NOISE).test(net, data.test)
    MaxMargin(steps=5).test(net, data.test)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # running statistics included


def test_neurons_are_batch_norm_channels_or_hidden_channels() -> None:
    plain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 5), nn.ReLU(), nn.Linear(5, 2))
    assert neuron_layers(plain) == (["0", "3"], "conv/dense")  # the logits' layer is not perturbed
    normed = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 2))
    assert neuron_layers(normed) == (["1"], "batch-norm")
    x = torch.rand(4, 1, SIDE, SIDE)
    neurons = Neurons.of(plain)
    with torch.no_grad():
        reference = plain(x)
        with neurons.applied(plain):  # mask 1, no noise: the same network
            assert torch.allclose(plain(x), reference, atol=1e-6)
        neurons.mask["3"][:] = 0  # the dense layer's neurons pruned: they output their bias alone
        seen = []
        with neurons.applied(plain):  # the hook below runs after the mask's, so it sees what the mask made
            handle = plain[3].register_forward_hook(lambda _m, _a, out: seen.append(out))
            plain(x)
        handle.remove()
        assert torch.allclose(seen[0], plain[3].bias.expand(4, 5))
    with pytest.raises(InputError, match="TorchScript"):
        Neurons.of(torch.jit.trace(plain, x))


def test_a_torchscript_model_gets_no_noise_test_and_says_why(infected, data) -> None:
    model, _ = infected
    traced = torch.jit.trace(model.net.eval(), data.test.x[:2])
    found = NeuronNoise(**SMALL_NOISE).test(traced, data.test)
    assert not found.ran and not found.flagged and "TorchScript" in found.note


def test_null_statistics() -> None:
    top, p = largest_of_gamma([10.0, 11.0, 9.5, 10.5, 12.0, 10.2, 9.8, 40.0])
    assert top == 7 and p < 1e-3
    top, p = largest_of_gamma([10.0, 11.0, 9.5, 10.5, 12.0, 10.2, 9.8, 11.5])
    assert top == 4 and p > 0.2
    assert bonferroni_normal(2.447, 10) == pytest.approx(0.072, abs=1e-3)  # the scan's count-aware threshold
    scores, top, p, z = pile_up(np.array([3, 2, 4, 200, 1, 3, 2, 5, 3, 2]))
    assert top == 3 and p < 1e-6 and z > 5
    assert pile_up(np.array([10, 12, 9, 11, 10, 13, 9, 12, 11, 10]))[2] > 0.05


def test_evidence_round_trips_and_bad_settings_are_refused() -> None:
    found = Evidence("mmbd", [0, 1, 2], [1.0, 5.0, float("nan")], 1, 0.01, 0.05, 5.0, {"a": 1}, 0.5)
    again = Evidence.from_dict(found.to_dict())
    assert again.candidate == 1 and again.flagged and np.isnan(again.scores[2]) and again.details == {"a": 1}
    for bad in ({"starts": 0}, {"optimizer": "lbfgs"}, {"alpha": 1.5}, {"lr": 0}):
        with pytest.raises(InputError):
            MaxMargin(**bad)
    for bad in ({"eps": 1.5}, {"draws": 0}, {"steps": 2.5}):
        with pytest.raises(InputError):
            NeuronNoise(**bad)
