"""Unlearning on what the network outputs: cross-entropy on logits even when the network ends in a
softmax, and a distillation term that keeps clean answers as the model given had them."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from neuralcleanse.data.augment import Mixup
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import attack_success_rate, clean_accuracy
from neuralcleanse.mitigation import Backdoor
from neuralcleanse.data.trigger import Trigger, patch_trigger
from neuralcleanse.mitigation.adversarial import RefoundTriggers
from neuralcleanse.mitigation.unlearning import JitteredStamp, Unlearner
from neuralcleanse.models.outputs import logits_view
from neuralcleanse.models.classifier import Classifier, ModelInfo
from neuralcleanse.models.fitting import distillation_loss
from tiny_task import K, SIDE, TARGET


def _ending_in_softmax(model: nn.Module, how: str) -> Classifier:
    net = nn.Sequential(copy.deepcopy(model), nn.Softmax(dim=1))
    if how == "torchscript":  # no module hooks, no tracing: only the log of the probabilities is left
        net = torch.jit.trace(net, torch.zeros(2, 1, SIDE, SIDE))
    return Classifier(net, ModelInfo(K, (1, SIDE, SIDE)))


@pytest.mark.parametrize("how", ["module", "torchscript"])
def test_logits_view_shares_weights_and_gives_logits(infected, data, how) -> None:
    model, _ = infected
    wrapped = _ending_in_softmax(model, how)
    view = logits_view(wrapped, data.test)
    assert view is not wrapped
    assert {id(p) for p in view.parameters()} == {id(p) for p in wrapped.parameters()}
    x = data.test.x[:32]
    with torch.no_grad():
        out, logits = view(x), model(x)
    # Logits up to a constant per row (exactly the logits when the softmax was cut off).
    torch.testing.assert_close(out - out.mean(1, keepdim=True), logits - logits.mean(1, keepdim=True),
                               atol=1e-4, rtol=0)
    assert logits_view(model, data.test) is model  # logits already: nothing to do


def test_unlearning_a_softmax_network_trains_its_logits(infected, data, trigger) -> None:
    """Cross-entropy on probabilities taken for logits follows another loss; through the logits view,
    unlearning the network that ends in a softmax is exactly unlearning the network before it."""
    model, _ = infected
    wrapped = _ending_in_softmax(model, "module")
    backdoor = [Backdoor(TARGET, trigger)]
    plain = Unlearner(steps=40, lr=1e-3, distill=0.0, rounds=1).fit(model, backdoor, data.train).apply()
    patched = Unlearner(steps=40, lr=1e-3, distill=0.0, rounds=1).fit(wrapped, backdoor, data.train).apply()
    for a, b in zip(plain.parameters(), patched.net[0].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert attack_success_rate(patched, data.test, trigger, TARGET) < 0.5
    assert isinstance(patched.net[-1], nn.Softmax)  # the network keeps its form: it still outputs probabilities
    assert torch.allclose(patched(data.test.x[:4]).sum(1), torch.ones(4))


def test_distillation_term_and_setting(infected, data, trigger) -> None:
    model, _ = infected
    x = data.test.x[:64]
    with torch.no_grad():
        same = distillation_loss(model(x), model, x)
        other = distillation_loss(model(x.flip(3)), model, x)
    assert float(same) == pytest.approx(0.0, abs=1e-6) and float(other) > 0.01
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="distill"):
            Unlearner(distill=bad)
    backdoor = [Backdoor(TARGET, trigger)]
    runs = {w: Unlearner(steps=60, lr=3e-3, distill=w, rounds=1).fit(model, backdoor, data.train) for w in (0.0, 1.0)}
    for w, run in runs.items():
        patched = run.apply()
        assert attack_success_rate(patched, data.test, trigger, TARGET) < 0.2, w
        assert clean_accuracy(patched, data.test) > clean_accuracy(model, data.test) - 0.05, w
    # The term changes the training (the losses differ) and the model given is left as it was.
    assert runs[0.0].unlearning_.losses != runs[1.0].unlearning_.losses
    assert attack_success_rate(model, data.test, trigger, TARGET) > 0.9


def test_mixup_mixes_a_share_and_keeps_labels_only_on_the_rest() -> None:
    x = torch.rand(400, 1, SIDE, SIDE)
    out, labelled = Mixup(0.5)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and labelled.dtype == torch.bool
    assert torch.equal(out[labelled], x[labelled])  # unmixed rows are the images themselves
    assert 0.35 < float((~labelled).float().mean()) < 0.65
    assert not torch.equal(out[~labelled], x[~labelled])
    # A mixed row lies between two images of the batch: within their pixel range.
    assert float(out.min()) >= float(x.min()) and float(out.max()) <= float(x.max())
    none, all_labelled = Mixup(0.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(none, x) and bool(all_labelled.all())


def test_unlearning_with_mixup(infected, data, trigger) -> None:
    model, _ = infected
    for bad in (-0.1, 1.0):
        with pytest.raises(InputError, match="mixup"):
            Unlearner(mixup=bad)
    backdoor = [Backdoor(TARGET, trigger)]
    runs = {m: Unlearner(steps=60, lr=3e-3, mixup=m, rounds=1).fit(model, backdoor, data.train) for m in (0.0, 0.5)}
    assert runs[0.0].unlearning_.losses != runs[0.5].unlearning_.losses  # the mixed rows change the training
    patched = runs[0.5].apply()
    assert attack_success_rate(patched, data.test, trigger, TARGET) < 0.2
    assert clean_accuracy(patched, data.test) > clean_accuracy(model, data.test) - 0.05
    # Without a teacher a mixed image would have nothing to learn from.
    with pytest.raises(InputError, match="mixup needs the distillation term"):
        Unlearner(distill=0.0, mixup=0.5)


def test_roaming_stamps_move_anywhere_and_the_default_stays_in_place() -> None:
    mask = torch.zeros(SIDE, SIDE)
    mask[:2, :2] = 1.0  # a corner patch
    backdoor = [Backdoor(TARGET, Trigger(mask, torch.ones(1, SIDE, SIDE)))]
    x = torch.zeros(400, 1, SIDE, SIDE)

    def corners(roam: float) -> torch.Tensor:
        stamp = JitteredStamp(backdoor, share=1.0, jitter=0, min_strength=1.0, roam=roam)
        out = stamp(x, torch.Generator().manual_seed(0))
        return (out[:, 0, :2, :2].sum((1, 2)) == 4).float()  # whole patch still at the corner

    assert bool(corners(0.0).all())
    moved = 1 - float(corners(1.0).mean())
    assert moved > 0.9  # nearly every stamp lands elsewhere (a few draws land on the corner)
    assert 0.3 < 1 - float(corners(0.5).mean()) < 0.7
    stamped = JitteredStamp(backdoor, share=1.0, jitter=0, min_strength=1.0, roam=1.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(stamped.sum((1, 2, 3)), torch.full((400,), 4.0))  # moved whole (wrapping), never cut
    rows_lit = stamped[:, 0].sum(2).gt(0).float().mean(0)
    assert bool((rows_lit > 0).all())  # over 400 stamps every row of the image was reached
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError, match="roam"):
            Unlearner(roam=bad)


def test_refound_triggers_move_toward_the_label_and_leave_the_model_alone(infected, data) -> None:
    """A search started from a trigger that does not work ends at one that sends inputs to the label,
    without touching the model's weights, gradients or batch-norm statistics."""
    model, _ = infected
    net = nn.Sequential(nn.BatchNorm2d(1), copy.deepcopy(model))  # statistics the search must not move
    net.train()
    decoy = patch_trigger((1, SIDE, SIDE), size=2, position="top-left", margin=1)
    found = RefoundTriggers(net, [Backdoor(TARGET, decoy)], search_steps=30, budget=3.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = data.test.x[data.test.y != TARGET][:128]
    start = Trigger(found.masks[0], found.patterns[0])
    for _ in range(3):  # warm-started: each search goes on from where the last ended
        found.refresh(x)
    assert found.searches == 3 and net.training  # the mode given back
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    hit = Trigger(found.masks[0], found.patterns[0])
    assert attack_success_rate(model, data.test, hit, TARGET) > attack_success_rate(model, data.test, start, TARGET) + 0.5
    assert hit.l1 <= 3.0 * decoy.l1 + 1.0  # the budget holds (to within the hinge's slack)


def test_adversarial_unlearning_removes_a_backdoor_the_reversed_trigger_missed(infected, data, trigger) -> None:
    """Given a decoy (a trigger elsewhere, as a search on a global-pooling net can return), plain
    unlearning leaves the planted trigger working; re-finding triggers while training removes it."""
    model, _ = infected
    decoy = [Backdoor(TARGET, patch_trigger((1, SIDE, SIDE), size=2, position="top-left", margin=1))]
    for bad in (-0.1, 1.0):
        with pytest.raises(InputError, match="adversarial"):
            Unlearner(adversarial=bad)
    with pytest.raises(InputError, match="refresh"):
        Unlearner(refresh=0)
    rates = {}
    for share in (0.0, 0.3):
        run = Unlearner(steps=60, lr=3e-3, adversarial=share, refresh=2, rounds=1).fit(model, decoy, data.train)
        patched = run.apply()
        rates[share] = attack_success_rate(patched, data.test, trigger, TARGET)
        refound = run.unlearning_.to_dict().get("refound_triggers")
        if share:  # what was re-found is on record: 30 searches (one every 2 of 60 steps), within budget
            assert refound["labels"] == [TARGET] and refound["searches"] == 30
            assert refound["l1_norms"][0] <= refound["budgets"][0] + 1.0
        else:
            assert refound is None
        assert clean_accuracy(patched, data.test) > clean_accuracy(model, data.test) - 0.05
    assert rates[0.0] > 0.8 and rates[0.3] < 0.2, rates
