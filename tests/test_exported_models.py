"""Models saved with torch.export (.pt2): they scan like their TorchScript twin, run on any batch size
(also when exported with a fixed one), and mitigating one writes a .pt2 back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cli_helpers import NUM_CLASSES, SIDE, TARGET, assert_bad_input, invoke, write_npz
from neuralcleanse.cli import EXIT_CLEAN, EXIT_INFECTED
from neuralcleanse.models.loading import complete_model_info, load_model
from test_model_formats import MEAN, SCAN, STD, TakesNHWC

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

PREPROCESSING = {"mean": (float(MEAN),), "std": (float(STD),)}
MITIGATE = ("--labels", str(TARGET), "--mean", MEAN, "--std", STD)


class FlattensByView(nn.Module):
    """`x.view(x.size(0), -1)`: exported with a fixed batch size, the size is written into the graph."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.features, self.head = net[:2], net[3:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(x.view(x.size(0), -1))


def export(net: nn.Module, path: Path, example: torch.Tensor, dynamic: bool = True) -> Path:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=shapes), str(path))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """An infected tiny model with mean/std normalisation, its network saved as TorchScript and, from the
    same weights, as .pt2: with a dynamic batch size, a fixed one, one that only works at that size,
    and channels-last."""
    from neuralcleanse.attacks import BadNets, patch_trigger
    from neuralcleanse.data import load_dataset
    from neuralcleanse.data.preprocessing import Preprocessing
    from neuralcleanse.training import train_model

    work = tmp_path_factory.mktemp("exported")
    npz = write_npz(work / "data.npz")
    data = load_dataset(npz)
    trigger = patch_trigger(data.train.input_shape, 2, "bottom-right", 1.0)
    model, report = train_model(data, "tiny", badnets=BadNets([trigger], [TARGET], 0.1), epochs=8, lr=5e-3,
                                preprocessing=Preprocessing(**PREPROCESSING), progress=False)
    assert report.attack_success[0] > 0.9
    net = model.net.eval()
    nchw, nhwc = torch.rand(2, 1, SIDE, SIDE), torch.rand(2, SIDE, SIDE, 1)
    files = {"npz": npz, "torchscript": work / "ts.pt"}
    torch.jit.trace(net, nchw).save(str(files["torchscript"]))
    files["pt2"] = export(net, work / "model.pt2", nchw)
    files["fixed"] = export(net, work / "fixed.pt2", nchw, dynamic=False)
    files["by_view"] = export(FlattensByView(net).eval(), work / "by_view.pt2", nchw, dynamic=False)
    files["nhwc"] = export(TakesNHWC(net).eval(), work / "nhwc.pt2", nhwc)
    return files


def scan(saved, out: Path, name: str, *extra: str) -> dict:
    result = invoke("scan", str(saved[name]), "--data", str(saved["npz"]), "--out", str(out), "--seed", "0",
                    *SCAN, *extra)
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def scans(saved, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("scans")
    return {"torchscript": scan(saved, work / "torchscript", "torchscript"),
            "pt2": scan(saved, work / "pt2", "pt2", "--trust-pickle"), "pt2_dir": work / "pt2"}


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the scan's optimisation follows: the gradient of a label's logit w.r.t. the pixels."""
    x = x.clone().requires_grad_()
    return torch.autograd.grad(model(x)[:, TARGET].sum(), x)[0]


@pytest.mark.parametrize("name", ["pt2", "by_view"])
def test_a_pt2_scans_like_its_torchscript_twin(saved, scans, tmp_path, name) -> None:
    reference = scans["torchscript"]
    assert reference["infected"] and TARGET in reference["flagged"]
    got = scans["pt2"] if name == "pt2" else scan(saved, tmp_path / name, name, "--trust-pickle")
    assert got["model"]["source"] == "exported"
    assert got["infected"] == reference["infected"] and got["flagged"] == reference["flagged"]
    assert got["l1_norms"] == pytest.approx(reference["l1_norms"], rel=1e-4, abs=1e-4)


def test_pt2_bad_input(saved, tmp_path) -> None:
    """torch.export.load can run code stored in the file, so a .pt2 is refused as a pickle is; a damaged
    file, or images of another size than the program was exported for, are one clear error each."""
    def bad(model: Path, data: Path, *extra: str):
        return invoke("scan", str(model), "--data", str(data), "--out", str(tmp_path / "o"), *SCAN, *extra)

    assert_bad_input(bad(saved["pt2"], saved["npz"]), "torch.export program", "--trust-pickle")
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(saved["pt2"].read_bytes()[:3000])
    assert_bad_input(bad(broken, saved["npz"], "--trust-pickle"), "cannot read", "broken.pt2")
    smaller = write_npz(tmp_path / "six.npz", side=6)
    assert_bad_input(bad(saved["pt2"], smaller, "--trust-pickle"), "takes input of shape (N,1,8,8)")


@pytest.mark.parametrize("name", ["pt2", "fixed", "by_view", "nhwc"])
def test_any_batch_size_and_gradients(saved, name, caplog) -> None:
    """Exported with a fixed batch of 2, a program still takes 1 or 5 images (the one with the size in its
    graph runs in chunks, with a warning); the input gets gradients; layout probing finds NHWC."""
    from neuralcleanse.models.classifier import clone_model

    reference = load_model(saved["torchscript"], preprocessing_overrides=PREPROCESSING)
    with caplog.at_level("WARNING", logger="neuralcleanse"):
        model = load_model(saved[name], preprocessing_overrides=PREPROCESSING, trust_pickle=True)
    assert ("runs in chunks of 2" in caplog.text) == (name == "by_view")
    complete_model_info(model, (1, SIDE, SIDE), NUM_CLASSES)
    assert model.info.metadata["input_layout"] == ("nhwc" if name == "nhwc" else "nchw")
    x = torch.rand(5, 1, SIDE, SIDE)
    for batch in (x, x[:1], x[:2]):
        assert torch.allclose(outputs(model, batch), outputs(reference, batch), atol=1e-5)
    grad, ref_grad = (input_gradient(m, x) for m in (model, reference))
    assert grad.abs().sum() > 0 and torch.allclose(grad, ref_grad, atol=1e-5)
    clone = clone_model(model)  # what mitigation patches: an independent copy with leaf parameters
    assert all(p.is_leaf for p in clone.parameters())
    assert not any(p is q for p, q in zip(clone.parameters(), model.parameters()))


def test_a_program_exported_in_training_mode_runs_as_in_eval_mode(tmp_path, caplog) -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(4 * (SIDE - 2) ** 2, NUM_CLASSES))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1), net[1].running_var.uniform_(0.5, 2)
    path = export(net.train(), tmp_path / "train.pt2", torch.rand(2, 1, SIDE, SIDE))
    with caplog.at_level("WARNING", logger="neuralcleanse"):
        model = load_model(path, trust_pickle=True)
    assert "exported in training mode" in caplog.text
    x = torch.rand(3, 1, SIDE, SIDE)
    assert torch.allclose(outputs(model, x), outputs(net.eval(), x), atol=1e-5)


def mitigate(saved, scans, out: Path, method: str, name: str = "pt2", *extra: str) -> dict:
    result = invoke("mitigate", str(saved[name]), "--scan", str(scans["pt2_dir"]), "--data", str(saved["npz"]),
                    "--method", method, "--out", str(out), "--trust-pickle", *MITIGATE, *extra)
    assert result.exit_code == EXIT_CLEAN, result.output
    return json.loads((out / "mitigation.json").read_text())


UNLEARN = ("-p", "epochs=3", "-p", "lr=5e-3")


@pytest.mark.parametrize("method, extra", [("unlearn", UNLEARN), ("prune", ("-p", "step=0.1"))])
def test_mitigating_a_pt2_writes_a_pt2(saved, scans, tmp_path, method, extra) -> None:
    report = mitigate(saved, scans, tmp_path / "fixed", method, "pt2", *extra)
    assert report["files"]["exported"] == "model.pt2"
    worst = {k: max(a["rate"] for a in report[k]["attack_success"]) for k in ("before", "after")}
    assert worst["after"] < 0.5 < worst["before"]
    if method == "unlearn":  # the same fine-tuning as the TorchScript twin gets
        twin = mitigate(saved, scans, tmp_path / "twin", method, "torchscript", *extra)
        assert twin["files"]["torchscript"]
        assert report["after"]["clean_accuracy"] == pytest.approx(twin["after"]["clean_accuracy"], abs=1e-3)
        assert report["after"]["attack_success"] == twin["after"]["attack_success"]
    before = load_model(saved["pt2"], preprocessing_overrides=PREPROCESSING, trust_pickle=True)
    again = load_model(tmp_path / "fixed" / "model.pt2", preprocessing_overrides=PREPROCESSING, trust_pickle=True)
    assert again.info.source == "exported"
    x = torch.rand(5, 1, SIDE, SIDE)
    assert not torch.allclose(outputs(again, x), outputs(before, x))  # the patch went into the file
    program = torch.export.load(str(tmp_path / "fixed" / "model.pt2"))
    image = next(n for n in program.graph.nodes
                 if n.op == "placeholder" and n.name in program.graph_signature.user_inputs)
    assert not isinstance(image.meta["val"].shape[0], int)  # any batch size, as the file it came from


def test_pruning_needs_a_program_that_takes_any_batch(saved, scans, tmp_path) -> None:
    result = invoke("mitigate", str(saved["by_view"]), "--scan", str(scans["pt2_dir"]), "--data", str(saved["npz"]),
                    "--method", "prune", "--out", str(tmp_path / "o"), "--trust-pickle", *MITIGATE)
    assert_bad_input(result, "exported for batches of exactly 2", "dynamic batch size")
