"""MAD outlier analysis (mad_outliers) checked against hand-built norms with known statistics."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from neuralcleanse.detection.outlier import CONSISTENCY, label_outliers, mad_outliers

# The published Neural Cleanse README (infected GTSRB model, 43 labels):
#   median: 64.466667, MAD: 13.238736
#   anomaly index: 3.652087
#   flagged label list: 33: 16.117647
# The published code prints MAD already multiplied by the consistency constant 1.4826
# (mad = 1.4826 * median(|x - median|)); the package's OutlierResult.mad is the raw MAD.
PUB_MEDIAN = 64.466667
PUB_SCALED_MAD = 13.238736
PUB_MIN = 16.117647
PUB_ANOMALY = 3.652087
PUB_FLAGGED_LABEL = 33


def published_gtsrb_norms() -> tuple[list[float], int, int]:
    """43 norms whose median, MAD and minimum are exactly the published ones.

    Sorted layout: 21 values below the median, one at the median, 21 above. Of the 43 absolute
    deviations, one is 0, twenty are below D (the raw MAD), one equals D and twenty-one exceed it,
    so the 22nd smallest deviation, the median deviation, is D.
    Returns (norms, index of the minimum, index of a large norm above the median).
    """
    m = PUB_MEDIAN
    d = PUB_SCALED_MAD / CONSISTENCY  # raw MAD, ≈ 8.9294
    small = np.linspace(0.5, 0.9, 10) * d             # 10 deviations below D
    big_below = np.linspace(1.1, 2.5, 10) * d         # 10 below-median deviations above D, index < 2
    big_above = np.linspace(1.2, 2.8, 9) * d          # 9 above-median deviations above D
    below = [PUB_MIN] + list(m - small) + list(m - big_below)     # 21 values
    above = list(m + small) + [m + d] + list(m + big_above) + [m + 60.0]  # 21 values, last one huge
    values = below + [m] + above
    assert len(values) == 43
    # Place the minimum at label 33 and the huge value at label 5, the rest in a fixed shuffle.
    rng = np.random.default_rng(7)
    others = [v for v in values if v not in (PUB_MIN, m + 60.0)]
    rng.shuffle(others)
    norms: list[float] = []
    it = iter(others)
    for label in range(43):
        if label == PUB_FLAGGED_LABEL:
            norms.append(PUB_MIN)
        elif label == 5:
            norms.append(m + 60.0)
        else:
            norms.append(next(it))
    return norms, PUB_FLAGGED_LABEL, 5


def test_published_gtsrb_example_statistics() -> None:
    norms, min_label, _ = published_gtsrb_norms()
    # The fixture really has the published statistics (independent numpy check).
    assert np.median(norms) == pytest.approx(PUB_MEDIAN, abs=1e-9)
    assert CONSISTENCY * np.median(np.abs(np.asarray(norms) - np.median(norms))) == pytest.approx(PUB_SCALED_MAD, abs=1e-9)

    res = mad_outliers(norms)
    assert round(res.median, 2) == 64.47
    assert round(res.mad * CONSISTENCY, 2) == 13.24          # the scaled MAD, as the paper's code prints it
    assert round(res.mad, 2) == round(PUB_SCALED_MAD / CONSISTENCY, 2) == 8.93  # the raw MAD the package stores
    assert round(res.min_norm, 2) == 16.12
    assert round(res.anomaly_index, 2) == 3.65
    assert res.anomaly_index == pytest.approx(PUB_ANOMALY, abs=1e-5)
    assert res.flagged == [min_label]
    assert res.infected
    assert res.label_indices[min_label] == pytest.approx(PUB_ANOMALY, abs=1e-5)
    assert len(res.label_indices) == 43


def test_label_above_median_with_large_deviation_is_not_flagged() -> None:
    norms, min_label, huge_label = published_gtsrb_norms()
    res = mad_outliers(norms)
    # The huge norm is far more anomalous than the threshold, but on the wrong side of the median.
    assert res.label_indices[huge_label] > 2 * res.threshold
    assert huge_label not in res.flagged
    # Every label flagged lies below the median with an index over the threshold.
    for label in res.flagged:
        assert norms[label] < res.median and res.label_indices[label] > res.threshold


def test_only_large_norm_outlier_gives_clean_verdict() -> None:
    norms = [10.0, 10.5, 9.8, 10.2, 9.9, 10.1, 80.0]
    res = mad_outliers(norms)
    assert max(res.label_indices) > 10
    assert res.flagged == []
    assert not res.infected


def test_label_indices_match_formula() -> None:
    rng = np.random.default_rng(3)
    norms = rng.uniform(5, 50, size=11).tolist()
    res = mad_outliers(norms)
    med = float(np.median(norms))
    mad = float(np.median(np.abs(np.array(norms) - med)))
    expected = [abs(v - med) / (CONSISTENCY * mad) for v in norms]
    assert res.median == pytest.approx(med)
    assert res.mad == pytest.approx(mad)
    np.testing.assert_allclose(res.label_indices, expected, rtol=1e-12)
    assert res.anomaly_index == pytest.approx(expected[int(np.argmin(norms))])


def test_even_count_median_is_mean_of_middle_values() -> None:
    norms = [1.0, 7.0, 3.0, 20.0, 9.0, 4.0]  # sorted 1 3 4 7 9 20 → median (4 + 7) / 2
    res = mad_outliers(norms)
    assert res.median == pytest.approx(5.5)
    # deviations 4.5 1.5 2.5 14.5 3.5 1.5 → sorted 1.5 1.5 2.5 3.5 4.5 14.5 → MAD 3.0
    assert res.mad == pytest.approx(3.0)
    assert res.anomaly_index == pytest.approx(4.5 / (CONSISTENCY * 3.0))


def test_threshold_is_respected() -> None:
    norms = [2.0, 10.0, 11.0, 9.0, 10.5, 9.5, 10.2]
    res = mad_outliers(norms)
    assert res.flagged == [0]
    strict = mad_outliers(norms, threshold=res.anomaly_index + 0.01)
    assert strict.flagged == [] and strict.threshold == pytest.approx(res.anomaly_index + 0.01)
    loose = mad_outliers(norms, threshold=res.anomaly_index - 0.01)
    assert 0 in loose.flagged


def test_no_flag_when_norms_are_similar() -> None:
    rng = np.random.default_rng(0)
    norms = (30.0 + rng.normal(0, 1.0, size=10)).tolist()
    res = mad_outliers(norms)
    assert res.flagged == []
    assert not res.infected
    assert res.anomaly_index < 2.0


def test_several_small_labels_all_flagged() -> None:
    norms = [3.0, 4.0, 50.0, 52.0, 49.0, 51.0, 50.5, 48.0, 53.0]
    res = mad_outliers(norms)
    assert sorted(res.flagged) == [0, 1]
    assert res.min_norm == 3.0


def test_zero_mad_gives_infinite_index() -> None:
    norms = [5.0, 5.0, 5.0, 1.0]
    res = mad_outliers(norms)
    assert res.mad == 0.0
    assert math.isinf(res.anomaly_index)
    assert res.flagged == [3]
    assert res.label_indices[:3] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("norms", [[], [1.0], [1.0, 2.0]])
def test_fewer_than_three_norms_is_an_error(norms: list[float]) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        mad_outliers(norms)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_norm_is_an_error(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        mad_outliers([1.0, 2.0, bad, 4.0])


def test_two_dimensional_input_is_an_error() -> None:
    with pytest.raises(ValueError):
        mad_outliers([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


# ---- edges of the rule: "below the median with an index *over* the threshold" --------------------


def exactly_two() -> list[float]:
    """Median 64, MAD 12 (both exact), and label 0's index exactly 2.0 in floating point."""
    scale = CONSISTENCY * 12.0
    return [64.0 - 2 * scale, 52.0, 58.0, 64.0, 70.0, 76.0, 76.0]


def test_index_exactly_at_the_threshold_is_not_flagged() -> None:
    norms = exactly_two()
    res = mad_outliers(norms)
    assert res.median == 64.0 and res.mad == 12.0
    assert res.anomaly_index == 2.0 and res.label_indices[0] == 2.0  # exactly, not approximately
    assert res.flagged == [] and not res.infected
    # One representable step smaller and the same label is over the threshold.
    nudged = [float(np.nextafter(norms[0], -np.inf))] + norms[1:]
    over = mad_outliers(nudged)
    assert over.anomaly_index > 2.0 and over.flagged == [0]
    # Any computed index used as the threshold is not "over" it either.
    loose = mad_outliers(nudged, threshold=over.anomaly_index)
    assert loose.flagged == []


@pytest.mark.parametrize("n", [3, 4, 10])
def test_all_norms_equal_flags_nothing(n: int) -> None:
    res = mad_outliers([7.25] * n)
    assert res.median == 7.25 and res.mad == 0.0 and res.min_norm == 7.25
    assert res.anomaly_index == 0.0  # no deviation at all: 0, not 0/0
    assert res.label_indices == [0.0] * n
    assert res.flagged == [] and not res.infected


def test_zero_mad_flags_a_smaller_norm_but_not_a_larger_one() -> None:
    norms = [5.0, 5.0, 9.0, 5.0, 1.0]  # median 5, deviations 0 0 4 0 4 → MAD 0
    res = mad_outliers(norms)
    assert res.mad == 0.0
    assert math.isinf(res.anomaly_index) and res.anomaly_index > 0
    assert math.isinf(res.label_indices[2]) and math.isinf(res.label_indices[4])
    assert res.label_indices[0] == res.label_indices[1] == res.label_indices[3] == 0.0
    assert res.flagged == [4]  # 9.0 is as anomalous, but above the median
    # No finite threshold holds an infinite index back.
    assert mad_outliers(norms, threshold=1e300).flagged == [4]


@pytest.mark.parametrize("norms", [[], [3.0], [3.0, 1.0]])
def test_label_outliers_needs_three_labels_too(norms: list[float]) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        label_outliers(norms, list(range(len(norms))))


def test_tied_smallest_norms_are_both_flagged() -> None:
    norms = [50.0, 3.0, 52.0, 49.0, 3.0, 51.0, 50.5, 48.0, 53.0]
    res = mad_outliers(norms)
    assert res.flagged == [1, 4]
    assert res.label_indices[1] == res.label_indices[4] == res.anomaly_index
    assert res.min_norm == 3.0
    # Ties above the threshold and below it keep the same verdict: nothing depends on their order.
    swapped = mad_outliers(norms[::-1])
    assert swapped.anomaly_index == res.anomaly_index
    assert sorted(len(norms) - 1 - i for i in swapped.flagged) == res.flagged


def test_tie_at_the_median_is_never_flagged() -> None:
    res = mad_outliers([10.0, 10.0, 10.0, 12.0, 8.0, 30.0, 1.0])
    assert res.median == 10.0
    assert [res.label_indices[i] for i in range(3)] == [0.0, 0.0, 0.0]
    assert all(i not in res.flagged for i in range(3))
    assert res.flagged == [6]


def test_label_outliers_maps_positions_to_label_ids() -> None:
    norms = [50.0, 2.0, 51.0, 49.0, 50.5, 3.0]
    labels = [0, 3, 4, 8, 9, 41]  # a subset of a larger model's labels
    by_position = mad_outliers(norms)
    by_label = label_outliers(norms, labels)
    assert by_position.flagged == [1, 5]
    assert by_label.flagged == [3, 41]
    # Everything else is the positional result, unchanged.
    for name in ("median", "mad", "min_norm", "anomaly_index", "label_indices", "threshold"):
        assert getattr(by_label, name) == getattr(by_position, name), name
    # Labels in any order: norms[i] belongs to labels[i].
    assert label_outliers(norms, [17, 12, 5, 1, 0, 2]).flagged == [12, 2]
    assert label_outliers(norms, labels, threshold=1e9).flagged == []


# ---- an infinite index on disk and on the page -------------------------------------------------


def test_infinite_index_through_report_json_and_the_page(tmp_path) -> None:
    import json

    import torch

    from neuralcleanse.detection.result import ScanResult
    from neuralcleanse.report.html_report import write_html_report
    from neuralcleanse.report.scan_report import load_scan, write_scan_report

    labels, norms = [0, 1, 2, 3], [5.0, 5.0, 5.0, 1.0]  # MAD 0: label 3's index is infinite
    gen = torch.Generator().manual_seed(0)
    result = ScanResult(labels=labels, masks=torch.rand(4, 8, 8, generator=gen),
                        patterns=torch.rand(4, 1, 8, 8, generator=gen), l1_norms=norms,
                        success_rates=[0.99] * 4, reached_threshold=[True] * 4, steps=[10] * 4,
                        outliers=label_outliers(norms, labels), settings={"preset": "fast"}, wall_time=1.5, passes=40)
    assert math.isinf(result.anomaly_index) and result.flagged == [3] and result.infected
    out = tmp_path / "scan"
    write_scan_report(result, out, model={"arch": "tiny"}, data={"name": "fake"})

    text = (out / "report.json").read_text()

    def no_constants(name: str):
        raise AssertionError(f"report.json holds {name}, which is not JSON")

    report = json.loads(text, parse_constant=no_constants)  # no Infinity / NaN anywhere
    assert report["anomaly_index"] is None
    assert report["label_anomaly_index"] == [0.0, 0.0, 0.0, None]
    assert report["flagged"] == [3] and report["infected"] is True and report["mad"] == 0.0

    again, raw = load_scan(out)
    assert raw == report
    assert math.isinf(again.anomaly_index) and again.flagged == [3] and again.infected
    assert again.l1_norms == norms and again.labels == labels
    assert torch.equal(again.masks, result.masks) and torch.equal(again.patterns, result.patterns)

    page = write_html_report(out).read_text()
    assert '<section class="verdict infected"' in page and "INFECTED" in page
    assert 'class="card flagged" data-label="3"' in page
    fact = re.search(r'<div class="fact"><b>([^<]*)</b><span>anomaly index</span>', page)
    assert fact and fact.group(1) in ("n/a", "∞"), fact  # no number: JSON had null
    assert "Infinity" not in page and ">inf<" not in page and ">nan<" not in page
