"""The Python API runs the command line's checks and follows one set of conventions."""
from __future__ import annotations

import importlib.metadata
import logging
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

import neuralcleanse
from neuralcleanse import ImageDataset, InputError, NeuralCleanse
from neuralcleanse.models.checks import output_kind
from tiny_task import K, SIDE


def test_input_error_is_a_value_error() -> None:
    assert issubclass(InputError, ValueError)


def test_version_has_one_source() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "neuralcleanse._version.__version__"}
    assert importlib.metadata.version("neuralcleanse") == neuralcleanse.__version__


def test_image_dataset_refuses_normalised_tensors() -> None:
    normalised = (torch.rand(20, 1, SIDE, SIDE) - 0.5) / 0.25
    with pytest.raises(InputError, match=r"raw pixels in \[0, 1\].*Preprocessing"):
        ImageDataset(normalised, torch.zeros(20, dtype=torch.long), K)
    with pytest.raises(InputError, match="NaN"):
        ImageDataset(torch.full((2, 1, SIDE, SIDE), float("nan")), torch.zeros(2, dtype=torch.long), K)
    assert len(ImageDataset(torch.rand(20, 1, SIDE, SIDE), torch.zeros(20, dtype=torch.long), K)) == 20


def test_constructor_handed_a_model_says_how_to_call_it(infected) -> None:
    model, _ = infected
    with pytest.raises(TypeError, match=r"NeuralCleanse\(preset=\.\.\.\)\.scan\(model, data\)"):
        NeuralCleanse(model)


class _NHWC(nn.Module):
    """A network made elsewhere: channels-last input, softmax output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x.permute(0, 3, 1, 2)), 1)


def test_api_scan_checks_the_model_like_the_cli(infected, data, caplog) -> None:
    """A plain nn.Module taking NHWC input and ending in a softmax: the API detects the layout (the
    scan would fail otherwise), sees that the outputs are probabilities and searches on the logits
    before the softmax, as the CLI does."""
    model, _ = infected
    foreign = _NHWC(model)
    with caplog.at_level(logging.INFO):
        result = NeuralCleanse("fast", samples=120, max_steps=4, progress=False).scan(foreign, data.test)
    assert result.num_labels == K
    assert result.settings["output_kind"] == "probabilities"
    assert result.settings["clean_accuracy"] > 0.9
    assert result.settings["logits_from"] == "cut before softmax"
    assert any("uses the logits before its final softmax" in r.getMessage() for r in caplog.records)


def test_api_scan_refuses_too_little_data(infected, data) -> None:
    model, _ = infected
    with pytest.raises(InputError, match="too few clean samples"):
        NeuralCleanse("fast", progress=False).scan(model, data.test.subset(torch.arange(5)))


def test_output_kind() -> None:
    logits = torch.randn(8, 5)
    assert output_kind(logits) == "logits"
    assert output_kind(torch.softmax(logits, 1)) == "probabilities"
    assert output_kind(torch.log_softmax(logits, 1)) == "log-probabilities"


def test_library_messages_name_arguments_and_the_cli_names_flags(tmp_path) -> None:
    from cli_helpers import invoke, write_npz
    from neuralcleanse.models.formats.weights import parse_kwargs

    with pytest.raises(InputError, match="`factory_kwargs` must be a JSON object"):
        parse_kwargs("[1]")
    npz = write_npz(tmp_path / "d.npz")
    (tmp_path / "w.pt").write_bytes(b"")
    result = invoke("scan", str(tmp_path / "w.pt"), "--data", str(npz), "--out", str(tmp_path / "o"),
                    "--factory", "os:getcwd", "--factory-kwargs", "[1]")
    assert "--factory-kwargs must be a JSON object" in result.stderr and "`" not in result.stderr.split("e.g.")[0]


def test_search_uses_the_logits_before_a_final_softmax(infected, data) -> None:
    """A network that ends in a softmax (module, function, or scripted): the search gets logits
    cut before it where the graph allows, else the log of the probabilities; predictions unchanged."""
    from neuralcleanse.models.classifier import Classifier, ModelInfo
    from neuralcleanse.models.outputs import logits_for_search

    model, _ = infected

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x):
            return torch.nn.functional.softmax(self.inner(x), dim=1)

    x = data.test.x[:16]
    logits = model(x).detach()
    for net, how in ((nn.Sequential(model, nn.Softmax(dim=1)), "cut before softmax"),
                     (Functional(), "cut before softmax"),
                     (torch.jit.trace(nn.Sequential(model, nn.Softmax(dim=1)), x), "log of probabilities")):
        wrapped = Classifier(net, ModelInfo(K, (1, SIDE, SIDE)))
        search, got = logits_for_search(wrapped, "probabilities", x)
        assert got == how
        out = search(x).detach()
        assert torch.equal(out.argmax(1), logits.argmax(1))
        if how == "cut before softmax":
            torch.testing.assert_close(out, logits)
        else:  # log-probabilities: the logits up to a constant per row
            torch.testing.assert_close(out - out.mean(1, keepdim=True), logits - logits.mean(1, keepdim=True),
                                       atol=1e-4, rtol=0)
    softmax = nn.Softmax(dim=1)
    result = NeuralCleanse("fast", samples=120, max_steps=4, progress=False).scan(nn.Sequential(model, softmax),
                                                                                   data.test)
    assert result.settings["logits_from"] == "cut before softmax"
    assert not softmax._forward_hooks  # nothing left behind on the user's network
