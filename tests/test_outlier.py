"""MAD outlier analysis (mad_outliers) checked against hand-built norms with known statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from neuralcleanse.detection.outlier import CONSISTENCY, mad_outliers

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
