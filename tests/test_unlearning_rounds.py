"""Unlearning in rounds: while a fresh reverse-engineering still finds the treated label, its new
trigger joins the earlier ones for another round."""
from __future__ import annotations

import pytest
import torch

from neuralcleanse.attacks import patch_trigger
from neuralcleanse.errors import InputError
from neuralcleanse.mitigation import Backdoor
from neuralcleanse.mitigation.unlearning import Unlearner
from tiny_task import SIDE, TARGET


def _other_trigger() -> Backdoor:
    return Backdoor(TARGET, patch_trigger((1, SIDE, SIDE), size=2, position="top-left", margin=1))


def test_rounds_go_on_while_the_recheck_finds_the_label(infected, data, trigger) -> None:
    model, _ = infected
    seen_models, calls = [], []

    def recheck(patched, every):
        assert every is False  # min_rounds=1: no round is forced
        seen_models.append(patched)
        calls.append(len(calls))
        return ([_other_trigger()] if len(calls) == 1 else []), {"round": len(calls)}

    u = Unlearner(steps=20, lr=1e-3, rounds=4, min_rounds=1).fit(model, [Backdoor(TARGET, trigger)], data.train,
                                                                 recheck=recheck)
    rounds = u.unlearning_.rounds
    # Round 1 trains, the recheck finds a trigger, round 2 trains with both, the recheck finds none: stop.
    assert [r["triggers_added"] for r in rounds] == [[TARGET], []] and len(calls) == 2
    assert len(u.unlearning_.losses) == 2 * len(Unlearner(steps=20, lr=1e-3, rounds=1).fit(
        model, [Backdoor(TARGET, trigger)], data.train).unlearning_.losses)
    # Each recheck saw the model its round made; the last one saw the model returned.
    assert seen_models[0] is not seen_models[1] and u.apply() is seen_models[1]


def test_one_round_never_rechecks(infected, data, trigger) -> None:
    model, _ = infected

    def recheck(patched, every):
        raise AssertionError("called with rounds=1")

    u = Unlearner(steps=10, lr=1e-3, rounds=1).fit(model, [Backdoor(TARGET, trigger)], data.train, recheck=recheck)
    assert u.unlearning_.rounds == []


def test_rounds_stop_at_the_limit(infected, data, trigger) -> None:
    model, _ = infected
    u = Unlearner(steps=10, lr=1e-3, rounds=3).fit(
        model, [Backdoor(TARGET, trigger)], data.train, recheck=lambda m, every: ([_other_trigger()], {}))
    assert len(u.unlearning_.rounds) == 2  # two rechecks between three rounds
    with pytest.raises(InputError, match="rounds"):
        Unlearner(rounds=0)


def test_min_rounds_run_whatever_the_recheck_finds(infected, data, trigger) -> None:
    """The first min_rounds rounds ask for every treated label's fresh trigger; later ones only for those
    still standing out, and stop when none is."""
    model, _ = infected
    asked = []

    def recheck(patched, every):
        asked.append(every)
        return ([_other_trigger()] if every else []), {}

    u = Unlearner(steps=10, lr=1e-3, rounds=4, min_rounds=2).fit(model, [Backdoor(TARGET, trigger)], data.train,
                                                                 recheck=recheck)
    assert asked == [True, False]
    assert [(r["forced"], r["triggers_added"]) for r in u.unlearning_.rounds] == [(True, [TARGET]), (False, [])]
    for bad in (0, 5):
        with pytest.raises(InputError, match="min_rounds"):
            Unlearner(rounds=4, min_rounds=bad)


@pytest.mark.slow
def test_rounds_through_mitigate_rescan_on_tuning_data(infected, data) -> None:
    from neuralcleanse.detection import NeuralCleanse
    from neuralcleanse.mitigation import mitigate

    model, _ = infected
    scan = NeuralCleanse("fast", samples=240, progress=False).scan(model, data.test)
    out = mitigate(model, scan, data, Unlearner(steps=30, lr=1e-3, rounds=2, min_rounds=1), labels=[TARGET])
    rounds = out.details["unlearning"]["rounds"]
    assert len(rounds) == 1 and rounds[0]["treated_labels"] == [TARGET] and rounds[0]["forced"] is False
    assert out.settings["rounds"] in (1, 2) and out.settings["rounds"] == 1 + bool(rounds[0]["triggers_added"])
    # By default the second round runs whatever the rescan finds, with the label's fresh trigger.
    out = mitigate(model, scan, data, Unlearner(steps=30, lr=1e-3, rounds=2), labels=[TARGET])
    rounds = out.details["unlearning"]["rounds"]
    assert rounds[0]["forced"] is True and rounds[0]["triggers_added"] == [TARGET]
    assert out.settings["rounds"] == 2 and out.settings["min_rounds"] == 2
    # With one round asked for, the default asks for no more.
    out = mitigate(model, scan, data, Unlearner(steps=30, lr=1e-3, rounds=1), labels=[TARGET])
    assert out.details["unlearning"]["rounds"] == [] and out.settings["rounds"] == 1


def test_step_budget_draws_from_every_label_of_a_sorted_set() -> None:
    """A set sorted by label and larger than the budget: the steps see every label, not the first few
    (measured: 300 steps on the first 19,200 of GTSRB's label-sorted training images cost 30 points)."""
    from neuralcleanse.data.dataset import ImageDataset
    from neuralcleanse.mitigation.unlearning import budget_subset

    y = torch.arange(10).repeat_interleave(100)  # sorted: 100 images of each label
    data = ImageDataset(torch.rand(1000, 1, 4, 4), y, 10, "sorted")
    part = budget_subset(data, 300, seed=0)
    assert len(part) == 300 and set(part.y.tolist()) == set(range(10))
    assert len(set(part.x.flatten(1).sum(1).tolist())) == 300  # no image twice while the set is larger
    cycled = budget_subset(data.subset(torch.arange(50)), 120, seed=0)  # smaller than the budget: each at least twice
    assert len(cycled) == 120
    counts = torch.unique(cycled.x.flatten(1).sum(1), return_counts=True)[1]
    assert len(counts) == 50 and counts.min() >= 2


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_norm_keeps_batch_norm_statistics(data, trigger, freeze) -> None:
    torch.manual_seed(0)
    channels = data.train.x.shape[1]
    net = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * SIDE * SIDE, int(data.train.y.max()) + 1)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    patched = Unlearner(steps=5, lr=1e-2, freeze_norm=freeze, rounds=1).fit(net, [Backdoor(TARGET, trigger)], data.train).apply()
    after = patched.state_dict()
    assert not torch.equal(after["0.weight"], before["0.weight"])  # it trained either way
    kept = torch.equal(after["1.running_mean"], before["1.running_mean"]) and \
        torch.equal(after["1.running_var"], before["1.running_var"])
    assert kept == freeze
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the source is untouched


@pytest.mark.slow
def test_extra_triggers_are_treated_beside_the_scans(infected, data) -> None:
    """mitigate(extra_triggers=): more reversed triggers of a treated label (e.g. other scan seeds) are
    stamped and measured beside the scan's, the label is treated once, and a label not treated is refused."""
    from neuralcleanse.detection import NeuralCleanse
    from neuralcleanse.mitigation import mitigate

    model, _ = infected
    scan = NeuralCleanse("fast", samples=240, progress=False).scan(model, data.test)
    method = Unlearner(steps=20, lr=1e-3, rounds=1)
    settings = dict(labels=[TARGET], verify=False)
    plain = mitigate(model, scan, data, method, **settings)
    more = mitigate(model, scan, data, method, extra_triggers=[_other_trigger()], **settings)
    assert plain.settings["extra_triggers"] == 0 and more.settings["extra_triggers"] == 1
    assert more.labels == [TARGET] and more.reversed_after.targets == [TARGET, TARGET]
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.parameters(), more.model.parameters()))
    with pytest.raises(InputError, match="not treated"):
        mitigate(model, scan, data, method, extra_triggers=[Backdoor(TARGET + 1, _other_trigger().trigger)],
                 **settings)
