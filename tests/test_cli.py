"""The command line end to end on tiny data: train, scan, TorchScript models, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from PIL import Image
from torch import nn

from cli_helpers import NUM_CLASSES, SIDE, TARGET, assert_bad_input, invoke, train_args, write_npz
from neuralcleanse.cli import EXIT_BAD_INPUT, EXIT_CLEAN, EXIT_INCONCLUSIVE, EXIT_INFECTED

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "neuralcleanse"
REPORT_KEYS = {"infected", "flagged", "anomaly_index", "l1_norms", "success_rates", "settings", "wall_time_s"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def dataset(workdir: Path) -> Path:
    return write_npz(workdir / "data.npz")


@pytest.fixture(scope="module")
def trained(workdir: Path, dataset: Path) -> tuple[Path, Result]:
    out = workdir / "m.pt"
    return out, invoke(*train_args(dataset, out))


@pytest.fixture(scope="module")
def torchscript_model(workdir: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES)).eval()
    path = workdir / "foreign.pt"
    torch.jit.trace(net, torch.rand(2, 1, SIDE, SIDE)).save(str(path))
    return path


# ---- train ----------------------------------------------------------------------------------


def test_train_writes_checkpoint_and_summary(trained) -> None:
    out, result = trained
    assert result.exit_code == EXIT_CLEAN, result.output
    assert out.is_file()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["checkpoint"] == str(out)
    assert summary["epochs"] == 8 and len(summary["losses"]) == 8
    assert summary["losses"][-1] < summary["losses"][0]
    assert summary["clean_accuracy"] > 0.9
    assert summary["attack_success"]["0"] > 0.9
    assert f"{summary['clean_accuracy']:.2%}" in result.stdout
    assert f"label {TARGET}" in result.stdout
    # The checkpoint rebuilds a working model that knows its backdoor.
    from neuralcleanse.models import load_model

    model = load_model(out)
    assert model.num_classes == NUM_CLASSES and model.input_shape == (1, SIDE, SIDE)
    assert model.info.arch == "tiny"
    assert model.info.metadata["backdoor"]["targets"] == [TARGET]
    assert model(torch.zeros(3, 1, SIDE, SIDE)).shape == (3, NUM_CLASSES)


def test_train_tiny_on_16px_images(tmp_path: Path) -> None:
    """`tiny` is sized from the data (image_size), and the checkpoint rebuilds it."""
    data = write_npz(tmp_path / "d16.npz", side=16, n_train=20, n_test=8)
    out = tmp_path / "m16.pt"
    result = invoke("train", "--dataset", str(data), "--arch", "tiny", "--epochs", "1", "--out", str(out))
    assert result.exit_code == EXIT_CLEAN, result.output
    from neuralcleanse.models import load_model

    model = load_model(out)
    assert model.input_shape == (1, 16, 16)
    assert list(model.info.arch_kwargs["image_size"]) == [16, 16]
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, NUM_CLASSES)


def test_train_bad_inputs(tmp_path: Path, dataset: Path) -> None:
    out = str(tmp_path / "x.pt")
    assert_bad_input(invoke("train", "--dataset", str(tmp_path / "nope"), "--arch", "tiny", "--out", out),
                     "not a known name")
    assert_bad_input(invoke("train", "--dataset", str(dataset), "--out", out), "choose an architecture with --arch")
    assert_bad_input(invoke("train", "--dataset", str(dataset), "--arch", "resnet9000", "--out", out), "unknown --arch")
    assert_bad_input(invoke("train", "--dataset", str(dataset), "--arch", "tiny", "--target", "7", "--out", out),
                     "--target must lie in 0..3")
    assert_bad_input(invoke("train", "--dataset", str(dataset), "--arch", "tiny", "--badnets", "--trigger-size",
                            "9", "--out", out), "does not fit")
    assert not (tmp_path / "x.pt").exists()


# ---- scan -----------------------------------------------------------------------------------


def check_report(out_dir: Path, result: Result, num_labels: int, max_steps: int) -> dict:
    report = json.loads((out_dir / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert isinstance(report["infected"], bool)
    assert len(report["l1_norms"]) == num_labels
    assert len(report["success_rates"]) == num_labels
    assert report["labels"] == list(range(num_labels))
    assert all(0.0 < v < SIDE * SIDE for v in report["l1_norms"])
    assert all(0.0 <= v <= 1.0 for v in report["success_rates"])
    assert set(report["flagged"]) <= set(report["labels"])
    assert report["infected"] == bool(report["flagged"])
    assert report["settings"]["config"]["max_steps"] == max_steps
    assert all(s <= max_steps for s in report["steps"])
    assert 0 < report["wall_time_s"] < 120 and report["image_passes"] > 0  # it ran, and a tiny scan is quick
    # The anomaly index is recomputable from the norms (their logs under the default rule).
    norms = np.asarray(report["l1_norms"])
    if report["rule"]["log_norms"]:
        norms = np.log(norms)
    med = np.median(norms)
    mad = np.median(np.abs(norms - med))
    assert report["anomaly_index"] == pytest.approx(abs(norms.min() - med) / (1.4826 * mad), rel=1e-6)
    # Exit code 3 iff the report says infected, 4 inconclusive, else 0.
    expected = {"infected": EXIT_INFECTED, "inconclusive": EXIT_INCONCLUSIVE}.get(report["verdict"], EXIT_CLEAN)
    assert result.exit_code == expected, result.output
    assert ("INFECTED" in result.stdout) == report["infected"]
    # Each test's evidence, and one verdict that follows from it.
    assert set(report["detectors"]) == {"nc", "noise", "mmbd"} and report["combined"]["verdict"] == report["verdict"]
    assert report["score"] == pytest.approx(report["combined"]["score"])
    # Images: mask, pattern and fusion per label, and the chart.
    for label in range(num_labels):
        for kind in ("mask", "pattern", "fusion"):
            png = out_dir / "triggers" / f"label_{label:04d}_{kind}.png"
            assert png.is_file(), png
            assert report["images"][str(label)][kind] == f"triggers/{png.name}"
        with Image.open(out_dir / "triggers" / f"label_{label:04d}_mask.png") as img:
            assert img.size[0] >= 112 and img.size[0] % SIDE == 0
    assert (out_dir / "norms.png").is_file()
    with Image.open(out_dir / "norms.png") as img:
        assert img.format == "PNG"
    assert not list(out_dir.rglob("*.tmp"))
    return report


def test_scan_trained_model(trained, dataset: Path, workdir: Path) -> None:
    model_path, train_result = trained
    assert train_result.exit_code == EXIT_CLEAN
    out = workdir / "scan"
    result = invoke("scan", str(model_path), "--data", str(dataset), "--out", str(out), "--max-steps", "12",
                    "--samples", "200")
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
    report = check_report(out, result, NUM_CLASSES, 12)
    assert report["model"]["known_backdoor_targets"] == [TARGET]
    assert report["model"]["arch"] == "tiny"
    assert report["settings"]["samples"] == 200
    # The planted 2x2 trigger is far smaller than what any clean label needs, and is flagged.
    assert int(np.argmin(report["l1_norms"])) == TARGET
    assert TARGET in report["flagged"]
    assert result.exit_code == EXIT_INFECTED


def test_scan_label_subset(trained, dataset: Path, tmp_path: Path) -> None:
    model_path, _ = trained
    result = invoke("scan", str(model_path), "--data", str(dataset), "--out", str(tmp_path / "s"), "--max-steps",
                    "3", "--samples", "80", "--labels", "0,2,3", "--loss", "original", "--preset", "original")
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED, EXIT_INCONCLUSIVE), result.output
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["labels"] == [0, 2, 3]
    assert all(e["labels"] == [0, 2, 3] for e in report["detectors"].values() if e["p_value"] is not None)
    assert len(report["l1_norms"]) == 3
    assert report["settings"]["config"]["loss"] == "original"
    assert report["settings"]["preset"] == "original"
    assert sorted(p.name for p in (tmp_path / "s" / "triggers").glob("*_mask.png")) == [
        "label_0000_mask.png", "label_0002_mask.png", "label_0003_mask.png"]
    assert result.exit_code == {"infected": EXIT_INFECTED, "inconclusive": EXIT_INCONCLUSIVE}.get(report["verdict"],
                                                                                               EXIT_CLEAN)


@pytest.mark.slow
def test_scan_confirm_rescans_near_the_threshold(trained, dataset: Path, tmp_path: Path) -> None:
    model_path, _ = trained
    args = ("scan", str(model_path), "--data", str(dataset), "--max-steps", "3", "--samples", "80", "--restarts", "0")
    first = json.loads(invoke(*args, "--out", str(tmp_path / "a"), "--json").stdout)
    # A threshold at the first scan's own index puts it within the band, so --confirm must rescan.
    index = max(first["anomaly_index"], 0.01)
    result = invoke(*args, "--out", str(tmp_path / "b"), "--confirm", "original", "--threshold", str(index))
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), result.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    confirmed = report["settings"]["confirmed"]
    assert confirmed["preset"] == "original" and confirmed["l1_norms_first"] == pytest.approx(first["l1_norms"])
    assert report["settings"]["config"]["batch_size"] == 32  # the original preset's, not fast's 8
    assert "with the original preset" in (tmp_path / "b" / "report.html").read_text()


def test_scan_torchscript_model(torchscript_model: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ts"
    result = invoke("scan", str(torchscript_model), "--data", str(dataset), "--out", str(out), "--num-classes",
                    str(NUM_CLASSES), "--max-steps", "5", "--samples", "80")
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED, EXIT_INCONCLUSIVE), result.output
    report = check_report(out, result, NUM_CLASSES, 5)
    assert report["model"]["source"] == "torchscript"
    assert report["model"]["num_classes"] == NUM_CLASSES
    assert report["model"]["input_shape"] == [1, SIDE, SIDE]


def test_scan_torchscript_infers_label_count(torchscript_model: Path, dataset: Path, tmp_path: Path) -> None:
    result = invoke("scan", str(torchscript_model), "--data", str(dataset), "--out", str(tmp_path / "ts2"),
                    "--max-steps", "2", "--samples", "40")
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED, EXIT_INCONCLUSIVE), result.output
    report = json.loads((tmp_path / "ts2" / "report.json").read_text())
    assert report["model"]["num_classes"] == NUM_CLASSES and len(report["l1_norms"]) == NUM_CLASSES


def test_scan_warns_of_searches_that_never_succeeded(trained, dataset: Path, tmp_path: Path) -> None:
    model_path, _ = trained
    result = invoke("scan", str(model_path), "--data", str(dataset), "--out", str(tmp_path / "short"),
                    "--max-steps", "1", "--samples", "40", "--restarts", "0", "--detectors", "nc")
    report = json.loads((tmp_path / "short" / "report.json").read_text())
    unreached = [label for label, ok in zip(report["labels"], report["reached_threshold"]) if not ok]
    assert unreached, "one step should leave some label's search short of the threshold"
    assert "never reached the attack threshold" in result.stderr and str(unreached) in result.stderr


def test_torchscript_model_scans_through_the_api(torchscript_model: Path, dataset: Path) -> None:
    """The rest of the TorchScript path works when the block size is given (skipping the probe that
    crashes): load, fill in the label count from the output, scan."""
    from neuralcleanse.data import load_dataset
    from neuralcleanse.detection import NeuralCleanse, ReverseConfig, ScanPlan
    from neuralcleanse.models.loading import complete_model_info, load_model

    model = load_model(torchscript_model)
    assert model.info.source == "torchscript" and model.num_classes == 0
    data = load_dataset(str(dataset)).test
    complete_model_info(model, data.input_shape, data.num_classes)
    assert model.num_classes == NUM_CLASSES and model.input_shape == (1, SIDE, SIDE)
    plan = ScanPlan(config=ReverseConfig(max_steps=3, samples_per_step=64), samples=80)
    result = NeuralCleanse(plan, progress=False, block_size=2).scan(model, data)
    assert len(result.l1_norms) == NUM_CLASSES and result.steps == [3] * NUM_CLASSES
    assert result.masks.shape == (NUM_CLASSES, SIDE, SIDE)


# ---- bad input ---------------------------------------------------------------------------


def test_scan_missing_model(dataset: Path, tmp_path: Path) -> None:
    assert_bad_input(invoke("scan", str(tmp_path / "missing.pt"), "--data", str(dataset), "--out",
                            str(tmp_path / "o")), "not found")
    assert not (tmp_path / "o").exists()


def test_scan_model_path_is_a_folder(dataset: Path, tmp_path: Path) -> None:
    assert_bad_input(invoke("scan", str(tmp_path), "--data", str(dataset), "--out", str(tmp_path / "o")),
                     "not a file")


def test_scan_non_model_file(dataset: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("this is not a model\n")
    assert_bad_input(invoke("scan", str(text), "--data", str(dataset), "--out", str(tmp_path / "o")), "cannot read")
    # A real PyTorch file that is not one of the tool's checkpoints (a bare state_dict).
    sd = tmp_path / "state_dict.pt"
    torch.save(nn.Linear(4, 2).state_dict(), sd)
    assert_bad_input(invoke("scan", str(sd), "--data", str(dataset), "--out", str(tmp_path / "o")),
                     "holds only weights", "--factory")
    # The dataset itself passed as a model.
    assert_bad_input(invoke("scan", str(dataset), "--data", str(dataset), "--out", str(tmp_path / "o")),
                     f"cannot read {dataset}", "as a neuralcleanse checkpoint or TorchScript file")


def test_scan_num_classes_disagrees_with_torchscript(torchscript_model: Path, dataset: Path, tmp_path: Path) -> None:
    assert_bad_input(invoke("scan", str(torchscript_model), "--data", str(dataset), "--out", str(tmp_path / "o"),
                            "--num-classes", str(NUM_CLASSES + 1)), "--num-classes", "outputs 4")


def test_scan_num_classes_disagrees_with_checkpoint(trained, dataset: Path, tmp_path: Path) -> None:
    model_path, _ = trained
    assert_bad_input(invoke("scan", str(model_path), "--data", str(dataset), "--out", str(tmp_path / "o"),
                            "--num-classes", "7"), "disagrees")


def test_scan_unknown_dataset(trained, tmp_path: Path) -> None:
    model_path, _ = trained
    assert_bad_input(invoke("scan", str(model_path), "--data", "no-such-dataset", "--out", str(tmp_path / "o")),
                     "not a known name")
    other = tmp_path / "data.csv"
    other.write_text("1,2,3\n")
    assert_bad_input(invoke("scan", str(model_path), "--data", str(other), "--out", str(tmp_path / "o")),
                     "not an .npz")


def test_scan_corrupt_npz(trained, dataset: Path, tmp_path: Path) -> None:
    model_path, _ = trained
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    assert_bad_input(invoke("scan", str(model_path), "--data", str(garbage), "--out", str(tmp_path / "o")),
                     "not an .npz archive")
    # A real archive with bytes overwritten in the middle of its arrays (zip CRC check fails).
    raw = bytearray(dataset.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(64)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(raw))
    assert_bad_input(invoke("scan", str(model_path), "--data", str(damaged), "--out", str(tmp_path / "o")),
                     f"cannot read {damaged}", "the file is corrupt")
    # Cut short: the zip directory at the end is gone.
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(dataset.read_bytes()[:500])
    assert_bad_input(invoke("scan", str(model_path), "--data", str(truncated), "--out", str(tmp_path / "o")),
                     f"{truncated} is not an .npz archive")
    assert not (tmp_path / "o").exists()


def test_scan_wrong_image_size(trained, tmp_path: Path) -> None:
    model_path, _ = trained
    data16 = write_npz(tmp_path / "d16.npz", side=16, n_train=5, n_test=5)
    assert_bad_input(invoke("scan", str(model_path), "--data", str(data16), "--out", str(tmp_path / "o")), "shape")


@pytest.mark.parametrize("labels, message", [
    ("0,1", "outlier analysis needs at least 3 labels"),
    ("2", "outlier analysis needs at least 3 labels"),
    ("0,1,9", "labels to scan must lie in 0..3"),
    ("a,b,c", "expected comma-separated label numbers, got 'a,b,c'"),
])
def test_scan_bad_labels(trained, dataset: Path, tmp_path: Path, labels: str, message: str) -> None:
    model_path, _ = trained
    assert_bad_input(invoke("scan", str(model_path), "--data", str(dataset), "--out", str(tmp_path / "o"),
                            "--labels", labels, "--max-steps", "1", "--samples", "40"), message)
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--max-steps", "0"], "Invalid value for '--max-steps': 0"),
    (["--samples", "-5"], "Invalid value for '--samples': -5"),
    (["--labels", "0,1.5,2"], "expected comma-separated label numbers, got '0,1.5,2'"),
    (["--threshold", "-1"], "Invalid value for '--threshold': -1"),
    (["--confirm", "thorough"], "Invalid value for '--confirm'"),
])
def test_scan_rejects_bad_numbers(trained, dataset: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    model_path, _ = trained
    assert_bad_input(invoke("scan", str(model_path), "--data", str(dataset), "--out", str(tmp_path / "o"),
                            *(["--max-steps", "2"] if "--max-steps" not in extra else []), *extra), message)


def test_scan_fewer_than_three_labels_message(trained, dataset: Path, tmp_path: Path) -> None:
    model_path, _ = trained
    assert_bad_input(invoke("scan", str(model_path), "--data", str(dataset), "--out", str(tmp_path / "o"),
                            "--labels", "0,1", "--max-steps", "1", "--samples", "40"), "at least 3 labels")


# ---- the installed console script -----------------------------------------------------------


@pytest.mark.slow
def test_console_script_help() -> None:
    proc = subprocess.run([str(EXE), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "scan", "demo"):
        assert command in proc.stdout
    assert proc.stderr == ""


@pytest.mark.slow
def test_console_script_bad_input_is_one_line(dataset: Path, tmp_path: Path) -> None:
    proc = subprocess.run([str(EXE), "scan", str(tmp_path / "missing.pt"), "--data", str(dataset), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.startswith("error: model file not found")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""
