"""The gated adversarial round (Unlearner's `adversarial_gate`): re-found triggers are stamped only
after the plain rounds, and only when a trigger re-found on the patched model still works."""
from __future__ import annotations

import pytest
import torch

from neuralcleanse.data.trigger import patch_trigger
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import attack_success_rate
from neuralcleanse.mitigation import Backdoor
from neuralcleanse.mitigation.unlearning import Unlearner
from tiny_task import SIDE, TARGET

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out


def test_gate_refuses_bad_values() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError, match="adversarial_gate"):
            Unlearner(adversarial=0.2, adversarial_gate=bad)
    with pytest.raises(InputError, match="adversarial > 0"):
        Unlearner(adversarial_gate=0.5)
    with pytest.raises(InputError, match="adversarial_rounds"):
        Unlearner(adversarial=0.2, adversarial_gate=0.5, adversarial_rounds=0)
    with pytest.raises(InputError, match="gate_budget"):
        Unlearner(adversarial=0.2, adversarial_gate=0.5, gate_budget=0)


def test_gate_opens_on_a_backdoor_the_plain_round_left(infected, data, trigger) -> None:
    """Given a decoy reversed trigger, the plain round leaves the planted backdoor; the gate's re-found
    trigger still works, so the adversarial round runs and removes it, and the check after says so."""
    model, _ = infected
    decoy = [Backdoor(TARGET, patch_trigger((1, SIDE, SIDE), size=2, position="top-left", margin=1))]
    # The test task's labels are reached through their own features within 2 reversed norms (see GATE_BUDGET).
    settings = dict(steps=60, lr=3e-3, refresh=2, gate_budget=1.0, rounds=1)
    plain = Unlearner(steps=60, lr=3e-3, rounds=1).fit(model, decoy, data.train).apply()
    run = Unlearner(adversarial=0.3, adversarial_gate=0.5, **settings).fit(model, decoy, data.train)
    checks = run.unlearning_.to_dict()["adversarial_gate"]
    assert attack_success_rate(plain, data.test, trigger, TARGET) > 0.8
    assert checks[0]["refound_success"] >= 0.5 and checks[0]["round_followed"]
    assert len(checks) == 2 and not checks[1]["round_followed"]  # one round at most (adversarial_rounds=1)
    assert checks[1]["refound_success"] < checks[0]["refound_success"]
    assert attack_success_rate(run.apply(), data.test, trigger, TARGET) < 0.2
    assert run.unlearning_.refound["searches"] == 30  # the stamps came from the gated round alone


def test_closed_gate_leaves_the_plain_result(infected, data, trigger) -> None:
    """When the plain round removed the backdoor, no re-found trigger reaches the gate: the model is
    exactly what plain unlearning gives, and the check is on record."""
    model, _ = infected
    real = [Backdoor(TARGET, trigger)]
    settings = dict(steps=60, lr=3e-3, rounds=1)
    plain = Unlearner(**settings).fit(model, real, data.train).apply()
    run = Unlearner(adversarial=0.3, adversarial_gate=0.5, gate_budget=1.0, **settings).fit(model, real, data.train)
    checks = run.unlearning_.gate_checks
    assert len(checks) == 1 and not checks[0]["round_followed"] and checks[0]["refound_success"] < 0.2
    for a, b in zip(plain.parameters(), run.apply().parameters()):
        assert torch.equal(a, b)
