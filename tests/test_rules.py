"""Decision rules: the statistic's edge cases, and verdicts including "inconclusive"."""
from __future__ import annotations

import math

import pytest

from neuralcleanse.detection.rules import RULES, Rule, get_rule


@pytest.fixture(params=sorted(RULES))
def rule(request) -> Rule:
    return RULES[request.param]


def test_all_norms_equal_flags_nothing(rule) -> None:
    o = rule.outliers([50.0] * 6, list(range(6)))
    assert o.flagged == [] and o.anomaly_index == 0.0 and o.mad == 0.0
    assert rule.verdict(o, [50.0] * 6, 784) in ("clean", "inconclusive")


def test_mad_of_zero_with_one_smaller_norm_is_infinitely_anomalous(rule) -> None:
    norms = [50.0, 50.0, 50.0, 50.0, 5.0]
    o = rule.outliers(norms, [10, 11, 12, 13, 14])
    assert o.flagged == [14] and math.isinf(o.anomaly_index)


def test_ties_at_the_bottom_are_flagged_together(rule) -> None:
    norms = [2.0, 2.0, 60.0, 62.0, 64.0, 66.0, 68.0, 70.0]
    assert rule.outliers(norms, list(range(8))).flagged == [0, 1]


def test_fewer_than_three_labels_is_refused(rule) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        rule.outliers([1.0, 2.0], [0, 1])


def test_log_rule_judges_by_ratio_not_difference() -> None:
    """Norms that spread multiplicatively: 3 against a median of 25 with others up to 300. The raw
    MAD sees a small difference next to a large spread (index 1.8); the log MAD an 8x smaller mask (3.6)."""
    norms = [3.0, 16.0, 18.0, 20.0, 24.0, 27.0, 30.0, 60.0, 150.0, 300.0]
    published, logged = get_rule("published"), get_rule("log-mad")
    assert published.outliers(norms, list(range(10))).flagged == []
    assert logged.outliers(norms, list(range(10))).flagged == [0]
    assert logged.cut(logged.outliers(norms, list(range(10)))) > 3.0


def test_inconclusive_when_every_label_is_easy() -> None:
    easy = Rule("t", easy_fraction=0.01)
    tiny = [1.5, 1.6, 2.0, 3.0, 4.0, 5.0, 20.0]  # median 3 on a 28x28 image: 0.4% of it
    o = easy.outliers(tiny, list(range(7)))
    assert easy.verdict(o, tiny, 784) == "inconclusive"
    normal = [8.0, 60.0, 64.0, 70.0, 75.0, 80.0, 90.0]
    assert easy.verdict(easy.outliers(normal, list(range(7))), normal, 784) == "infected"


def test_rule_records_round_trip_and_refuse_damage() -> None:
    for rule in RULES.values():
        assert Rule.from_dict(rule.to_dict()) == rule
    for bad in (None, {"name": 3}, {"name": "x", "threshold": "2"}, {"name": "x", "log_norms": 1}):
        with pytest.raises(ValueError):
            Rule.from_dict(bad)
    with pytest.raises(ValueError, match="unknown rule"):
        get_rule("nope")
    assert get_rule("published", 3.0).threshold == 3.0
