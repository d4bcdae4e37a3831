"""Adversarial neuron pruning: its mask, its clean-only choice of threshold, and the pruned model; chains of repairs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from neuralcleanse.data.trigger import Backdoor
from neuralcleanse.errors import InputError
from neuralcleanse.mitigation import make_method, mitigate
from neuralcleanse.mitigation.anp import AdversarialNeuronPruning, prune_neurons
from neuralcleanse.mitigation.chain import Chain
from neuralcleanse.mitigation.unlearning import Unlearner
from neuralcleanse.models.neurons import batch_statistics
from tiny_task import SIDE, TARGET

pytestmark = pytest.mark.slow


def test_anp_learns_a_mask_and_keeps_accuracy_within_the_tolerance(infected, data, trigger) -> None:
    model, _ = infected
    before = {k: v.clone() for k, v in model.state_dict().items()}
    anp = AdversarialNeuronPruning(iterations=150, accuracy_tolerance=0.05).fit(model, [Backdoor(TARGET, trigger)],
                                                                                data.train)
    found = anp.anp_
    assert found.kind == "conv/dense" and found.layers  # the tiny net has no batch-norm: its hidden layers
    assert all(0 <= v <= 1 for m in found.masks.values() for v in m)
    # The threshold kept is the largest whose held-back accuracy stays within the tolerance, in images.
    allowed = int(0.05 * found.scored_on + 1e-6)
    fine = [s["threshold"] for s in found.sweep
            if round((found.base_accuracy - s["clean_accuracy"]) * found.scored_on) <= allowed]
    assert found.threshold == (max(fine) if fine else None)
    # Pruned neurons have zero weights in the patched copy; the model given is untouched.
    patched = dict(anp.apply().net.named_modules())
    for name, index in found.pruned.items():
        assert torch.all(patched[name].weight[index] == 0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_nothing_is_pruned_when_every_threshold_costs_too_much(infected, data, trigger) -> None:
    model, _ = infected
    anp = AdversarialNeuronPruning(iterations=20, accuracy_tolerance=0.0, thresholds=(0.5, 0.9), mask_lr=5.0)
    found = anp.fit(model, [Backdoor(TARGET, trigger)], data.train).anp_
    if found.threshold is None:
        assert found.pruned_count == 0
        assert all(torch.equal(a, b) for a, b in zip(anp.apply().parameters(), model.parameters()))


def test_prune_neurons_zeroes_weights_keeps_biases() -> None:
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4))
    nn.init.uniform_(net[1].bias, 0.5, 1.0)
    prune_neurons(net, {"1": [0, 2], "4": [1]})
    assert net[1].weight[0] == 0 and net[1].weight[2] == 0 and net[1].weight[1] != 0 and net[1].bias.abs().sum() > 0
    assert torch.all(net[4].weight[1] == 0) and net[4].bias[1] != 0


def test_batch_statistics_are_put_back() -> None:
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).eval()
    kept = net[1].running_mean.clone()
    with batch_statistics(net):
        assert net.training
        net(torch.rand(8, 1, SIDE, SIDE) + 3)
    assert not net.training and torch.equal(net[1].running_mean, kept)


def test_anp_through_mitigate_and_in_a_chain(infected, data) -> None:
    from neuralcleanse.detection import NeuralCleanse

    model, _ = infected
    scan = NeuralCleanse("fast", samples=240, progress=False).scan(model, data.test)
    out = mitigate(model, scan, data, AdversarialNeuronPruning(iterations=60), labels=[TARGET], verify=False)
    assert out.method == "anp" and out.attack_trigger == "real" and "anp" in out.details
    assert out.settings["threshold"] == out.details["anp"]["threshold"]
    chain = make_method("unlearn+anp", {"rounds": 1, "steps": 20, "anp.iterations": 30, "lr": 1e-3})
    assert isinstance(chain, Chain) and chain.name == "unlearn+anp"
    assert chain.steps[0].rounds == 1 and chain.steps[1].iterations == 30 and chain.steps[0].lr == 1e-3
    out = mitigate(model, scan, data, chain, labels=[TARGET], verify=False)
    assert set(out.settings) >= {"unlearn", "anp"} and {"unlearning", "anp"} <= set(out.details)
    assert out.after.worst_attack_success < out.before.worst_attack_success
    with pytest.raises(InputError, match="has no parameter"):
        make_method("unlearn+anp", {"stepz": 1})
    with pytest.raises(InputError, match="unknown method"):
        make_method("unlearn+burn")
    with pytest.raises(InputError, match="cannot be chained"):
        Chain(Unlearner(), make_method("filter"))


def test_sau_fine_tunes_a_copy_and_records_its_shared_examples(infected, data, trigger) -> None:
    from neuralcleanse.mitigation.sau import SharedAdversarialUnlearning

    model, _ = infected
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sau = SharedAdversarialUnlearning(steps=20, batch_size=32).fit(model, [Backdoor(TARGET, trigger)], data.train)
    found = sau.sau_
    assert found.steps == 20 and len(found.losses) == len(found.shared_rate) == 3  # every 10th step and the last
    assert found.shared_rate[0] > 0.5  # on the backdoored model most searched examples fool both models alike
    assert any(not torch.equal(a, b) for a, b in zip(sau.apply().parameters(), model.parameters()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for bad in ({"eps": 0}, {"steps": 0}, {"lr": -1}):
        with pytest.raises(InputError):
            SharedAdversarialUnlearning(**bad)
