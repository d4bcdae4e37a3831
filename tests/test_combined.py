"""One verdict from several tests: the rule, and a scan's report that keeps every test's evidence."""
from __future__ import annotations

import json
import math

import pytest

from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.detection.combined import CombineRule, combine
from neuralcleanse.detection.evidence import Evidence, bonferroni_normal
from neuralcleanse.errors import InputError
from neuralcleanse.pipeline import run_scan
from neuralcleanse.report.html_report import write_html_report
from neuralcleanse.report.scan_report import load_scan
from tiny_task import TARGET


def _e(test: str, label: int, p: float, alpha: float = 0.05) -> Evidence:
    return Evidence(test, list(range(6)), [0.0] * 6, label, p, alpha)


def test_the_rule() -> None:
    quiet = combine({"nc": _e("nc", 1, 0.5), "mmbd": _e("mmbd", 2, 0.3), "noise": _e("noise", 3, 0.9)})
    assert quiet.verdict == "clean" and quiet.flagged == [] and quiet.p_value == pytest.approx(1.0)
    # Neural Cleanse speaks: its labels are flagged; the model's p-value is Bonferroni over the counting tests.
    found = combine({"nc": _e("nc", 2, 1e-6), "noise": _e("noise", 3, 0.9)}, nc_flagged=[2, 4])
    assert found.verdict == "infected" and found.flagged == [2, 4] and set(found.speaking) == {"nc"}
    assert found.score == pytest.approx(-math.log10(2e-6))
    assert "by this test alone (neuron noise: no label stands out)" in found.reason  # the page says so
    # MM-BD does not count by default: alone it flags nothing, and the reason says what it saw.
    alone = combine({"nc": _e("nc", 2, 0.5), "mmbd": _e("mmbd", 2, 1e-4), "noise": _e("noise", 3, 0.9)})
    assert alone.verdict == "clean" and "MM-BD" in alone.reason and "advisory" in alone.reason
    both = combine({"nc": _e("nc", 2, 1e-6), "noise": _e("noise", 5, 1e-4)})
    assert both.verdict == "infected" and both.flagged == [2, 5] and "different labels" in both.reason
    # A test speaks at its level divided by the number of counting tests that ran: 0.03 is not enough for two.
    assert combine({"nc": _e("nc", 2, 0.03), "noise": _e("noise", 2, 0.9)}).verdict == "clean"
    assert combine({"nc": _e("nc", 2, 0.03), "noise": Evidence.not_run("noise", 0.05, "no batch-norm")}
                   ).verdict == "infected"  # alone, Neural Cleanse keeps its whole level
    assert "the only counting test that could run" in combine({"nc": _e("nc", 2, 0.03)}).reason
    # Far tails keep their order (models are ranked by them) rather than all rounding to 0.
    assert 0 < bonferroni_normal(12.0, 10) < bonferroni_normal(9.0, 10) < 1e-15
    # A level of 0 never speaks, even against a p-value that underflowed to 0.
    assert combine({"nc": _e("nc", 2, 0.0, alpha=0.0)}).verdict == "clean"
    strict = CombineRule(count=("nc", "noise", "mmbd"), quorum=2)
    one = combine({"nc": _e("nc", 2, 1e-6), "mmbd": _e("mmbd", 4, 0.5)}, strict)
    assert one.verdict == "inconclusive" and "2 tests must speak" in one.reason
    assert CombineRule.from_dict(strict.to_dict()) == strict
    for bad in ({"quorum": 0}, {"count": ()}, {"count": ("magic",)}):
        with pytest.raises(ValueError):
            CombineRule(**bad)


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
