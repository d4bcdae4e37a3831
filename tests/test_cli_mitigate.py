"""`neuralcleanse mitigate` end to end on a tiny infected model: each method, outputs, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import NUM_CLASSES, SIDE, TARGET, assert_bad_input, invoke, train_tiny, write_npz
from neuralcleanse.cli import EXIT_CLEAN, EXIT_INFECTED

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

KEYS = {"method", "labels", "attack_trigger", "settings", "before", "after", "reversed_trigger", "baselines", "files"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mitigate")


@pytest.fixture(scope="module")
def dataset(workdir: Path) -> Path:
    return write_npz(workdir / "data.npz")


@pytest.fixture(scope="module")
def model(workdir: Path, dataset: Path) -> Path:
    out = workdir / "m.pt"
    train_tiny(dataset, out)
    return out


@pytest.fixture(scope="module")
def scan_dir(workdir: Path, dataset: Path, model: Path) -> Path:
    out = workdir / "scan"
    result = invoke("scan", str(model), "--data", str(dataset), "--out", str(out), "--samples", "200")
    assert result.exit_code == EXIT_INFECTED, result.output
    assert TARGET in json.loads((out / "report.json").read_text())["flagged"]
    assert "INFECTED" in (out / "report.html").read_text()  # scan writes the page itself
    return out


def run(model: Path, scan_dir: Path, dataset: Path, out: Path, method: str, *extra: str):
    return invoke("mitigate", str(model), "--scan", str(scan_dir), "--data", str(dataset), "--method", method,
                  "--out", str(out), "--labels", str(TARGET), *extra)


def check_output(out: Path, result, method: str) -> dict:
    assert result.exit_code == EXIT_CLEAN, result.output
    report = json.loads((out / "mitigation.json").read_text())
    assert KEYS <= set(report), KEYS - set(report)
    assert report["method"] == method and report["labels"] == [TARGET]
    assert report["attack_trigger"] == "real"  # our BadNets checkpoint carries its trigger
    assert (out / report["files"]["chart"]).stat().st_size > 1000
    assert "attack success" in result.output
    page = (out / "report.html").read_text()  # the scan and this mitigation on one page
    assert "INFECTED" in page and "data:image/png;base64," in page
    return report


@pytest.mark.parametrize("method", ["prune", "unlearn"])
def test_patched_checkpoint_lowers_attack_success_and_scans(model, scan_dir, dataset, workdir, method) -> None:
    out = workdir / method
    extra = ("-p", "epochs=3", "--baselines") if method == "unlearn" else ("-p", "step=0.05")
    report = check_output(out, run(model, scan_dir, dataset, out, method, *extra), method)
    before = report["before"]["attack_success"][0]["rate"]
    after = report["after"]["attack_success"][0]["rate"]
    assert after < before, (before, after)
    assert report["files"]["checkpoint"] == "model.pt"
    rescan = invoke("scan", str(out / "model.pt"), "--data", str(dataset), "--out", str(out / "rescan"),
                    "--samples", "80", "--max-steps", "4")
    assert rescan.exit_code in (EXIT_CLEAN, EXIT_INFECTED), rescan.output
    if method == "prune":
        pruning = report["pruning"]
        assert pruning["curve"][0]["units"] == 0 and pruning["pruned_units"]
        assert report["settings"]["step"] == 0.05
    else:
        assert set(report["baselines"]) == {"fine_tune_no_trigger", "unlearn_real_trigger"}


def test_filter_reports_rates(model, scan_dir, dataset, workdir) -> None:
    out = workdir / "filter"
    result = run(model, scan_dir, dataset, out, "filter", "-p", "top_fraction=0.1", "--fpr", "0.1")
    report = check_output(out, result, "filter")
    assert "false-positive rate" in result.output
    f = report["filter"]
    assert 0 <= f["false_positive_rate"] < 0.25
    # On this tiny net a third of the real trigger's inputs are caught: more than clean ones flagged, not most.
    assert 1 - f["false_negative_rate"] > f["false_positive_rate"]
    assert len(f["units"]) <= 3 and f["layer"] == {"name": "5", "side": "input"}
    # Fisher's discriminant by default (offsets, unit scales, signed weights); the published mean one flag away.
    assert f["score"] == "lda" and len(f["offset"]) == len(f["weight"]) == len(f["units"]) >= 1
    assert set(f["scale"]) == {1.0}
    assert report["settings"]["fit_samples"] == report["settings"]["tune_samples"]  # all of a small tuning split
    out = workdir / "filter-mean"
    published = check_output(out, run(model, scan_dir, dataset, out, "filter", "-p", "top-fraction=0.1",
                                      "-p", "score=mean"), "filter")["filter"]
    assert published["score"] == "mean" and "scale" not in published and "weight" not in published
    assert len(published["units"]) == 3


def test_existing_results_are_not_overwritten(model, scan_dir, dataset, workdir) -> None:
    out = workdir / "again"
    assert run(model, scan_dir, dataset, out, "prune", "-p", "step=0.1").exit_code == EXIT_CLEAN
    stamp = (out / "mitigation.json").stat().st_mtime_ns
    assert_bad_input(run(model, scan_dir, dataset, out, "prune"), "already holds", "--force")
    assert (out / "mitigation.json").stat().st_mtime_ns == stamp
    assert run(model, scan_dir, dataset, out, "prune", "-p", "step=0.1", "--force").exit_code == EXIT_CLEAN


def test_torchscript_model_unlearns_to_torchscript(scan_dir, dataset, workdir, model) -> None:
    from neuralcleanse.models.loading import load_model

    classifier = load_model(model)
    path = workdir / "foreign.pt"
    torch.jit.trace(classifier.net.eval(), torch.rand(2, 1, SIDE, SIDE)).save(str(path))
    out = workdir / "ts_unlearn"
    result = run(path, scan_dir, dataset, out, "unlearn", "-p", "epochs=3")
    report = json.loads((out / "mitigation.json").read_text())
    assert result.exit_code == EXIT_CLEAN, result.output
    assert report["files"]["torchscript"] == "model.torchscript.pt"
    assert report["attack_trigger"] == "reversed"  # a file from elsewhere records no real trigger
    assert report["after"]["attack_success"][0]["rate"] < report["before"]["attack_success"][0]["rate"]
    patched = torch.jit.load(str(out / "model.torchscript.pt"))
    assert patched(torch.rand(3, 1, SIDE, SIDE)).shape == (3, NUM_CLASSES)
    assert_bad_input(run(path, scan_dir, dataset, workdir / "ts_prune", "prune"), "TorchScript")


def test_bad_input(model, scan_dir, dataset, workdir, tmp_path) -> None:
    def bad(*extra: str, method: str = "prune", scan: Path = scan_dir):
        return invoke("mitigate", str(model), "--scan", str(scan), "--data", str(dataset), "--method", method,
                      "--out", str(tmp_path / "o"), *extra)

    assert_bad_input(bad("-p", "layer=fc9"), "unknown layer 'fc9'", "Linear")
    assert_bad_input(bad("-p", "step=0"), "step", "(0, 1]")
    assert_bad_input(bad("-p", "step=1.5"), "step", "(0, 1]")
    assert_bad_input(bad("-p", "top_fraction=2", method="filter"), "top_fraction", "(0, 1]")
    assert_bad_input(bad("-p", "trigger_share=-1", method="unlearn"), "trigger_share")
    assert_bad_input(bad("-p", "mixup=0.5", "-p", "distill=0", method="unlearn"), "mixup needs the distillation term")
    assert_bad_input(bad("-p", "roam=1.5", method="unlearn"), "roam must lie in [0, 1], got 1.5")
    assert_bad_input(bad("-p", "adversarial=1", method="unlearn"), "adversarial must lie in [0, 1)")
    assert_bad_input(bad("-p", "refresh=0", method="unlearn"), "refresh must be a whole number")
    assert_bad_input(bad("-p", "adversarial_gate=1.5", "-p", "adversarial=0.2", method="unlearn"),
                     "adversarial_gate must lie in [0, 1]")
    assert_bad_input(bad("-p", "adversarial_gate=0.5", method="unlearn"), "adversarial > 0")
    assert_bad_input(bad("-p", "min_rounds=3", "-p", "rounds=2", method="unlearn"), "min_rounds", "rounds (2)")
    assert_bad_input(bad("-p", "recipe=cooking", method="unlearn"), "unknown unlearning recipe 'cooking'")
    # Names are checked against the method's parameters, with the list in the message.
    assert_bad_input(bad("-p", "stepz=2"), "prune has no parameter stepz", "stop_success")
    assert_bad_input(bad("-p", "steps"), "KEY=VALUE")
    assert_bad_input(bad("-p", "device=cuda"), "has no parameter device")  # --device says it
    assert_bad_input(bad("--fpr", "0.1"), "--fpr", "--method prune")
    assert_bad_input(bad(scan=tmp_path / "none"), "no report.json")
    assert_bad_input(bad("--labels", "9"), "not scanned")
    assert_bad_input(bad(method="burn"), "Invalid value for '--method': 'burn'")
    assert not (tmp_path / "o" / "mitigation.json").exists()


def test_clean_verdict_has_nothing_to_mitigate(model, scan_dir, dataset, tmp_path) -> None:
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    report = json.loads((scan_dir / "report.json").read_text())
    # The same scan judged with a threshold no label reaches (all three fields, or the scan reads as edited).
    report.update(threshold=1e9, flagged=[], infected=False, verdict="clean")
    report["rule"]["threshold"] = 1e9
    (quiet / "report.json").write_text(json.dumps(report))
    (quiet / "triggers.npz").write_bytes((scan_dir / "triggers.npz").read_bytes())
    result = invoke("mitigate", str(model), "--scan", str(quiet), "--data", str(dataset), "--method", "unlearn",
                    "--out", str(tmp_path / "o"))
    assert_bad_input(result, "flagged no label", "nothing was changed")
    assert not (tmp_path / "o").exists()


def test_report_command(scan_dir, workdir, tmp_path) -> None:
    result = invoke("report", str(scan_dir), "--out", str(tmp_path / "page.html"))
    assert result.exit_code == EXIT_CLEAN, result.output
    page = (tmp_path / "page.html").read_text()
    assert "INFECTED" in page
    # The mitigations above were written next to the scan folder, not inside it: name one.
    result = invoke("report", str(scan_dir), "--out", str(tmp_path / "with.html"), "--mitigation",
                    str(workdir / "prune"))
    assert result.exit_code == EXIT_CLEAN, result.output
    assert "pruning" in (tmp_path / "with.html").read_text().lower()
    assert_bad_input(invoke("report", str(tmp_path / "nothing")), f"{tmp_path / 'nothing'} is not a folder")
