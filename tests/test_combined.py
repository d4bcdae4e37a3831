"""One verdict from several tests: the rule, and a scan's report that keeps every test's evidence."""
from __future__ import annotations

import json

import pytest

from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.detection.combined import CombineRule, combine
from neuralcleanse.detection.evidence import Evidence
from neuralcleanse.errors import InputError
from neuralcleanse.pipeline import run_scan
from neuralcleanse.report.html_report import write_html_report
from neuralcleanse.report.scan_report import load_scan
from tiny_task import TARGET


def _e(test: str, label: int, p: float, alpha: float = 0.05) -> Evidence:
    return Evidence(test, list(range(6)), [0.0] * 6, label, p, alpha)


def test_the_rule() -> None:
    quiet = combine({"nc": _e("nc", 1, 0.5), "mmbd": _e("mmbd", 2, 0.3), "noise": _e("noise", 3, 0.9)})
    assert quiet.verdict == "clean" and quiet.flagged == [] and quiet.p_value == pytest.approx(0.9)
    agree = combine({"nc": _e("nc", 2, 1e-6), "mmbd": _e("mmbd", 2, 1e-4), "noise": _e("noise", 3, 0.9)},
                    nc_flagged=[2, 4])
    assert agree.verdict == "infected" and agree.flagged == [2, 4] and set(agree.speaking) == {"nc", "mmbd"}
    assert agree.score == pytest.approx(-__import__("math").log10(3e-6))
    alone = combine({"nc": _e("nc", 2, 0.5), "mmbd": _e("mmbd", 2, 1e-4), "noise": _e("noise", 3, 0.9)})
    assert alone.verdict == "inconclusive" and "only MM-BD" in alone.reason and alone.flagged == []
    apart = combine({"nc": _e("nc", 2, 1e-6), "mmbd": _e("mmbd", 5, 1e-4)})
    assert apart.verdict == "inconclusive" and "different labels" in apart.reason
    # A test speaks at its level divided by the number of tests that ran: 0.02 is not enough among three.
    assert combine({"nc": _e("nc", 2, 0.02), "mmbd": _e("mmbd", 2, 0.02), "noise": _e("noise", 2, 0.9)}).verdict == "clean"
    assert combine({"nc": _e("nc", 2, 0.02), "mmbd": _e("mmbd", 2, 1e-3)}, CombineRule(quorum=1)).verdict == "infected"
    skipped = combine({"nc": _e("nc", 2, 1e-6), "noise": Evidence.not_run("noise", 0.05, "TorchScript")})
    assert skipped.verdict == "inconclusive"  # one test that ran cannot make a quorum of two
    with pytest.raises(ValueError):
        CombineRule(quorum=0)


def test_report_keeps_every_test_and_refuses_an_edited_verdict(infected, data, tmp_path) -> None:
    model, _ = infected
    out = tmp_path / "scan"
    result = run_scan(model, data.test, out, NeuralCleanse(samples=240, progress=False))
    assert set(result.evidence) == {"nc", "noise", "mmbd"} and result.combined is not None
    again, report = load_scan(out)
    assert again.verdict == result.verdict and again.flagged == result.flagged
    assert again.score == pytest.approx(result.score, rel=1e-6)
    assert {k: e.candidate for k, e in again.evidence.items()} == {k: e.candidate for k, e in result.evidence.items()}
    page = write_html_report(out).read_text()
    assert 'id="tests"' in page and "Neuron noise" in page and "MM-BD" in page and result.combined.reason in page
    # A p-value edited so that the verdict no longer follows from the evidence.
    report["detectors"]["mmbd"]["p_value"] = 1.0 if result.infected else 1e-9
    report["detectors"]["mmbd"]["candidate"] = result.evidence["nc"].candidate
    report["detectors"]["noise"]["p_value"] = 1.0 if result.infected else 1e-9
    report["detectors"]["noise"]["candidate"] = result.evidence["nc"].candidate
    report["detectors"]["nc"]["p_value"] = 1.0 if result.infected else 1e-9
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="edited"):
        load_scan(out)


def test_the_paper_alone_and_bad_detector_lists(infected, data) -> None:
    model, _ = infected
    alone = NeuralCleanse(samples=240, progress=False, detectors=("nc",)).scan(model, data.test)
    assert alone.combined is None and alone.evidence == {} and alone.flagged == list(alone.outliers.flagged)
    assert TARGET in alone.flagged and "detectors" not in alone.to_dict()
    for bad, message in ((("noise",), "must include nc"), (("nc", "magic"), "unknown detector"),
                         (("nc", "noise", "noise"), "twice")):
        with pytest.raises(InputError, match=message):
            NeuralCleanse(detectors=bad)
