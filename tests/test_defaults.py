"""The command line runs what the Python API runs: every flag that sets an argument of the API has the
API's default, so `neuralcleanse scan` equals `NeuralCleanse().scan()` and `neuralcleanse mitigate` equals
`mitigate(model, scan, data)`, and a default changed in one place is changed in both."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import click
import pytest

from neuralcleanse.cli import main
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.mitigation import DEFAULT_METHOD, METHODS, mitigate
from neuralcleanse.mitigation.input_filter import InputFilter


def api_default(fn: Callable[..., Any], name: str) -> Any:
    return inspect.signature(fn).parameters[name].default


def flags(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in main.commands[command].params}


def test_scan_flags_default_to_the_scanner() -> None:
    shared = {name: p for name, p in flags("scan").items() if name in inspect.signature(NeuralCleanse).parameters}
    assert {"preset", "rule", "seed", "schedule", "restarts", "workers", "precision", "device"} <= set(shared)
    for name, param in shared.items():
        expected = api_default(NeuralCleanse, name)
        given = param.default.split(",") if name == "detectors" else param.default
        assert given == (str(expected) if name == "device" else list(expected) if name == "detectors" else expected), name


def test_mitigate_flags_default_to_the_runner_and_the_methods() -> None:
    options = flags("mitigate")
    assert options["method"].default == DEFAULT_METHOD == api_default(mitigate, "method")
    assert options["baselines"].default is api_default(mitigate, "baselines") is False
    assert options["verify"].default is api_default(mitigate, "verify") is True
    for cls in METHODS.values():
        assert str(api_default(cls, "device")) == options["device"].default, cls
        assert api_default(cls, "seed") == options["seed"].default, cls
    # --fpr is the filter's false-positive rate; unset, the filter's own default applies, and the help says which.
    assert options["fpr"].default is None
    assert f"default {api_default(InputFilter, 'false_positive_rate')}" in options["fpr"].help


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_parameter_is_reachable_from_the_command_line(name: str) -> None:
    """What is not a flag of its own is a -p KEY=VALUE, checked against the method's signature."""
    from neuralcleanse.mitigation import make_method

    for param in inspect.signature(METHODS[name]).parameters.values():
        if param.name in ("seed", "device", "progress"):
            continue
        method = make_method(name, {param.name: param.default} if param.default is not None else {})
        assert isinstance(method, METHODS[name])


def test_mitigate_help_stays_lean() -> None:
    options = [p for p in main.commands["mitigate"].params if isinstance(p, click.Option) and not p.hidden]
    assert len(options) + 1 <= 25  # and --help
