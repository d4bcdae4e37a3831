"""A model trained with its own normalisation, saved in every format the tool reads, scans to the
same verdict as the tool's own checkpoint of it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cli_helpers import NUM_CLASSES, SIDE, TARGET, assert_bad_input, invoke, write_npz
from neuralcleanse.cli import EXIT_CLEAN, EXIT_INFECTED
from neuralcleanse.models.loading import load_model

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

MEAN, STD = "0.3", "0.2"
FACTORY = "neuralcleanse.models.architectures:tiny_net"
KWARGS = json.dumps({"num_classes": NUM_CLASSES, "in_channels": 1, "image_size": SIDE})
SCAN = ("--samples", "200", "--block-size", "1", "--mean", MEAN, "--std", STD)


def needs_onnx() -> None:
    """ONNX cases skip, not fail, without the optional packages (README: onnx, and onnx2torch with
    --no-deps). onnx2torch is looked up, not imported: importing it needs torchvision, which this
    project leaves out and the tool replaces with a stand-in (models/formats/onnx.py), so
    importorskip("onnx2torch") would skip even where the tool converts ONNX fine."""
    pytest.importorskip("onnx", reason="onnx not installed: pip install 'onnx>=1.16'")
    if importlib.util.find_spec("onnx2torch") is None:
        pytest.skip("onnx2torch not installed: pip install --no-deps onnx2torch==1.5.15")


class TakesNHWC(nn.Module):
    """A network exported by a framework that feeds images channels-last."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The tool's checkpoint of an infected model with mean/std normalisation, and its network
    saved as a state_dict, safetensors, a pickled module, TorchScript and NHWC TorchScript (ONNX:
    `onnx_exported`)."""
    from neuralcleanse.attacks import BadNets, patch_trigger
    from neuralcleanse.data import load_dataset
    from neuralcleanse.data.preprocessing import Preprocessing
    from neuralcleanse.models.formats.checkpoint import save_checkpoint
    from neuralcleanse.training import train_model

    work = tmp_path_factory.mktemp("formats")
    npz = write_npz(work / "data.npz")
    data = load_dataset(npz)
    trigger = patch_trigger(data.train.input_shape, 2, "bottom-right", 1.0)
    model, report = train_model(data, "tiny", badnets=BadNets([trigger], [TARGET], 0.1), epochs=8, lr=5e-3,
                                preprocessing=Preprocessing(mean=(float(MEAN),), std=(float(STD),)), progress=False)
    assert report.attack_success[0] > 0.9
    net = model.net.eval()
    files = {"npz": npz, "checkpoint": save_checkpoint(model, work / "model.pt")}
    torch.save(net.state_dict(), files.setdefault("state_dict", work / "weights.pt"))
    save_file(net.state_dict(), str(files.setdefault("safetensors", work / "weights.safetensors")))
    torch.save(net, files.setdefault("pickle", work / "whole.pt"))
    torch.jit.trace(net, torch.rand(2, 1, SIDE, SIDE)).save(str(files.setdefault("torchscript", work / "ts.pt")))
    torch.jit.trace(TakesNHWC(net).eval(), torch.rand(2, SIDE, SIDE, 1)).save(
        str(files.setdefault("nhwc", work / "nhwc.pt")))
    return files


@pytest.fixture(scope="module")
def onnx_exported(exported) -> dict[str, Path]:
    """`exported` plus the network as ONNX, NCHW and NHWC (skips without onnx/onnx2torch: the
    exporter itself needs the onnx package)."""
    needs_onnx()
    net, work = load_model(exported["checkpoint"]).net.eval(), exported["npz"].parent
    files = dict(exported)
    torch.onnx.export(net, (torch.rand(2, 1, SIDE, SIDE),), str(files.setdefault("onnx", work / "model.onnx")),
                      dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    torch.onnx.export(TakesNHWC(net).eval(), (torch.rand(2, SIDE, SIDE, 1),),
                      str(files.setdefault("onnx_nhwc", work / "nhwc.onnx")), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    return files


def scan(exported, tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    result = invoke("scan", str(exported[name]), "--data", str(exported["npz"]), "--out", str(out), *SCAN, *extra)
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("name, extra", [
    ("state_dict", ("--factory", FACTORY, "--factory-kwargs", KWARGS)),
    ("safetensors", ("--factory", FACTORY, "--factory-kwargs", KWARGS)),
    ("pickle", ("--trust-pickle",)),
    ("torchscript", ()),
    ("nhwc", ()),  # detected from a probe
    ("nhwc", ("--input-layout", "nhwc")),
    ("onnx", ()),
    ("onnx_nhwc", ()),  # as Keras-made ONNX files often are
])
def test_every_format_gets_the_checkpoints_verdict(exported, tmp_path, name, extra, request) -> None:
    if name.startswith("onnx"):
        exported = request.getfixturevalue("onnx_exported")
    reference = scan(exported, tmp_path, "checkpoint")
    assert reference["infected"] and TARGET in reference["flagged"]
    got = scan(exported, tmp_path, name, *extra)
    assert got["infected"] == reference["infected"] and got["flagged"] == reference["flagged"]
    assert got["l1_norms"] == pytest.approx(reference["l1_norms"], rel=1e-3, abs=1e-3)
    assert got["model"]["clean_accuracy_on_scan_data"] == pytest.approx(
        reference["model"]["clean_accuracy_on_scan_data"])


def test_implausible_accuracy_is_warned_about(exported, tmp_path, caplog) -> None:
    """Wrong preprocessing or labels show up as near-chance accuracy on clean data: the scan says
    so loudly, and records the accuracy in report.json."""
    with np.load(exported["npz"]) as z:
        arrays = {k: z[k] for k in z.files}
    shifted = tmp_path / "shifted.npz"  # the same images, every label moved by one: labels that do not match
    np.savez(shifted, **{**arrays, **{k: (arrays[k] + 1) % NUM_CLASSES for k in ("y_train", "y_test")}})
    with caplog.at_level("WARNING", logger="neuralcleanse"):
        good = scan(exported, tmp_path, "checkpoint")
    assert good["model"]["clean_accuracy_on_scan_data"] > 0.9
    assert "chance" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="neuralcleanse"):
        bad = invoke("scan", str(exported["checkpoint"]), "--data", str(shifted), "--out", str(tmp_path / "bad"), *SCAN)
    assert bad.exit_code in (EXIT_CLEAN, EXIT_INFECTED), bad.output
    assert json.loads((tmp_path / "bad" / "report.json").read_text())["model"]["clean_accuracy_on_scan_data"] < 0.1
    assert "accuracy" in caplog.text and "chance" in caplog.text and "preprocessing" in caplog.text


def test_layout_detection(exported) -> None:
    from neuralcleanse.models.layout import ChannelsLastInput
    from neuralcleanse.models.loading import complete_model_info

    nhwc = load_model(exported["nhwc"])
    complete_model_info(nhwc, (1, SIDE, SIDE), NUM_CLASSES)
    assert isinstance(nhwc.net, ChannelsLastInput) and nhwc.info.metadata["input_layout"] == "nhwc"
    nchw = load_model(exported["torchscript"])
    complete_model_info(nchw, (1, SIDE, SIDE), NUM_CLASSES)
    assert nchw.info.metadata["input_layout"] == "nchw"


def test_format_errors(exported, tmp_path) -> None:
    def bad(name: str, *extra: str):
        return invoke("scan", str(exported[name]), "--data", str(exported["npz"]), "--out", str(tmp_path / "o"),
                      *SCAN, *extra)

    assert_bad_input(bad("pickle"), "pickled model", "--trust-pickle")
    assert_bad_input(bad("state_dict"), "holds only weights", "--factory")
    assert_bad_input(bad("safetensors"), "holds only weights", "--factory")
    assert_bad_input(bad("state_dict", "--factory", "nope.module:fn"), "cannot import 'nope.module'")
    assert_bad_input(bad("state_dict", "--factory", "neuralcleanse.models.architectures:nope"), "has no 'nope'")
    assert_bad_input(bad("state_dict", "--factory", "no_colon"), "package.module:function")
    assert_bad_input(bad("state_dict", "--factory", FACTORY, "--factory-kwargs", "{bad json"), "JSON object")
    assert_bad_input(bad("state_dict", "--factory", FACTORY, "--factory-kwargs", '{"num_classes": 9}'),
                     "do not fit the network")
    assert_bad_input(bad("state_dict", "--factory-kwargs", KWARGS), "needs --factory")
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x00" * 20)
    assert_bad_input(invoke("scan", str(corrupt), "--data", str(exported["npz"]), "--out", str(tmp_path / "o"),
                            "--factory", FACTORY, "--factory-kwargs", KWARGS), "cannot read safetensors")


@pytest.mark.parametrize("change, message", [
    ({"arch": "resnet9000"}, "resnet9000"),
    ({"arch_kwargs": {"bogus": 1}}, "bogus"),
    ({"version": 99}, "newer than this tool understands"),
], ids=["unknown-arch", "bad-arch-kwargs", "newer-version"])
def test_edited_checkpoint_is_bad_input(exported, tmp_path, change, message) -> None:
    """A checkpoint is data: a tampered one names an architecture the tool has, or is refused."""
    payload = torch.load(exported["checkpoint"], map_location="cpu", weights_only=True)
    edited = tmp_path / "edited.pt"
    torch.save({**payload, **change}, edited)
    assert_bad_input(invoke("scan", str(edited), "--data", str(exported["npz"]), "--out", str(tmp_path / "o")),
                     message)


def test_corrupt_onnx_file(exported, tmp_path) -> None:
    needs_onnx()
    bad_onnx = tmp_path / "broken.onnx"
    bad_onnx.write_bytes(b"not onnx")
    assert_bad_input(invoke("scan", str(bad_onnx), "--data", str(exported["npz"]), "--out", str(tmp_path / "o")),
                     "cannot convert ONNX model", "broken.onnx")
    assert not (tmp_path / "o").exists()


def test_onnx_without_its_packages_says_what_to_install(exported, tmp_path, monkeypatch) -> None:
    """Runs everywhere: with the packages hidden, an ONNX file is bad input naming what to install."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name.split(".")[0] in (
        "onnx", "onnx2torch") else find_spec(name, *a, **k))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not onnx")
    assert_bad_input(invoke("scan", str(model), "--data", str(exported["npz"]), "--out", str(tmp_path / "o")),
                     "ONNX models need two extra packages", "onnx2torch==1.5.15", "--no-deps")


def test_mitigating_a_factory_model_writes_its_weights(exported, tmp_path) -> None:
    out = tmp_path / "scan"
    extra = ("--factory", FACTORY, "--factory-kwargs", KWARGS)
    invoke("scan", str(exported["state_dict"]), "--data", str(exported["npz"]), "--out", str(out), *SCAN, *extra)
    fixed = tmp_path / "fixed"
    result = invoke("mitigate", str(exported["state_dict"]), "--scan", str(out), "--data", str(exported["npz"]),
                    "--method", "prune", "--out", str(fixed), "--labels", str(TARGET), "-p", "step=0.1",
                    "--mean", MEAN, "--std", STD, *extra)
    assert result.exit_code == EXIT_CLEAN, result.output
    report = json.loads((fixed / "mitigation.json").read_text())
    assert report["files"]["state_dict"] == "model.state_dict.pt"
    again = load_model(fixed / "model.state_dict.pt", factory=FACTORY, factory_kwargs=json.loads(KWARGS))
    assert isinstance(again.net, nn.Sequential)


def test_mitigating_an_onnx_model_writes_onnx(onnx_exported, tmp_path) -> None:
    exported = onnx_exported
    out = tmp_path / "scan"
    invoke("scan", str(exported["onnx"]), "--data", str(exported["npz"]), "--out", str(out), *SCAN)
    fixed = tmp_path / "fixed"
    result = invoke("mitigate", str(exported["onnx"]), "--scan", str(out), "--data", str(exported["npz"]),
                    "--method", "prune", "--out", str(fixed), "--labels", str(TARGET), "-p", "step=0.1",
                    "--mean", MEAN, "--std", STD)
    assert result.exit_code == EXIT_CLEAN, result.output
    report = json.loads((fixed / "mitigation.json").read_text())
    assert report["files"]["onnx"] == "model.onnx"
    again = load_model(fixed / "model.onnx", preprocessing_overrides={"mean": (0.3,), "std": (0.2,)})
    before = load_model(exported["onnx"], preprocessing_overrides={"mean": (0.3,), "std": (0.2,)})
    x = torch.rand(5, 1, SIDE, SIDE)
    with torch.no_grad():
        assert not torch.allclose(again(x), before(x))  # the pruning went into the exported file
