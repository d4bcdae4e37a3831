"""Decision rules: how the per-label mask norms of a scan become a verdict.

`published` is the paper's: MAD outlier test on the raw L1 norms, anomaly index over 2 for a
label below the median. Other rules change the statistic or add an "inconclusive" verdict; each is
measured on the model populations of benchmarks/population.py (docs/results.md says which won and
by how much), and the published one stays a flag away (`--rule published`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from neuralcleanse.detection.outlier import OutlierResult, label_outliers

VERDICTS = ("clean", "infected", "inconclusive")


@dataclass(frozen=True)
class Rule:
    """log_norms: run the MAD test on log(L1 norm), so a label counts as an outlier by the factor
    its mask is smaller by, not by the difference (norms spread multiplicatively across labels).
    easy_fraction: when the median label's mask covers less than this share of the image, every
    label is easy to reach and mask size cannot single out a backdoor: the verdict is
    "inconclusive" (None: never).
    alpha: when set, the threshold grows with the number of labels n tested: the z-score that
    the smallest of n normal draws passes with probability about `alpha` (Bonferroni,
    Φ⁻¹(1 − alpha/n)), never below `threshold`. At 1,000 labels an index of 2 is the tail of the
    natural spread, not an outlier (docs/results.md, "Scale")."""

    name: str
    log_norms: bool = False
    threshold: float = 2.0
    easy_fraction: float | None = None
    description: str = ""
    alpha: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {self.threshold}")
        if self.easy_fraction is not None and not 0 < self.easy_fraction < 1:
            raise ValueError(f"easy_fraction must lie in (0, 1), got {self.easy_fraction}")
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")

    def threshold_for(self, tested: int) -> float:
        """The anomaly index that flags a label when `tested` labels were scanned."""
        if self.alpha is None or tested < 1:
            return self.threshold
        return max(self.threshold, NormalDist().inv_cdf(1 - self.alpha / tested))

    def outliers(self, norms: Sequence[float], labels: Sequence[int], reference: Sequence[int] | None = None,
                 tested: int | None = None) -> OutlierResult:
        """`reference`: the labels whose norms estimate the median and MAD (default all);
        `tested`: how many labels the scan looked at (default: as many as norms)."""
        values = np.log(np.maximum(np.asarray(norms, dtype=np.float64), 1e-6)) if self.log_norms else norms
        return label_outliers(values, labels, self.threshold_for(tested or len(norms)), reference)

    def verdict(self, outliers: OutlierResult, norms: Sequence[float], image_area: int) -> str:
        if self.easy_fraction is not None and float(np.median(norms)) < self.easy_fraction * image_area:
            return "inconclusive"
        return "infected" if outliers.flagged else "clean"

    def cut(self, outliers: OutlierResult) -> float:
        """The L1 norm under which a label is flagged (may be negative: nothing can be)."""
        edge = outliers.median - outliers.threshold * outliers.consistent_mad
        return float(math.exp(edge)) if self.log_norms else float(edge)

    def with_threshold(self, threshold: float) -> "Rule":
        """This rule with a fixed threshold (a count-aware one becomes fixed)."""
        return replace(self, threshold=threshold, alpha=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "Rule":
        """A rule as report.json records it; unknown or damaged records raise ValueError."""
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError("the rule is not recorded as an object with a name")
        easy, alpha = d.get("easy_fraction"), d.get("alpha")
        fields = (d.get("log_norms", False), d.get("threshold", 2.0), easy)
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        if not isinstance(fields[0], bool) or not number(fields[1]) or not (easy is None or number(easy)) \
                or not (alpha is None or number(alpha)):
            raise ValueError("the rule's settings have the wrong types")
        return cls(d["name"], fields[0], float(fields[1]), None if easy is None else float(easy),
                   str(d.get("description", "")), None if alpha is None else float(alpha))


RULES: dict[str, Rule] = {
    "published": Rule("published", description="MAD of the raw L1 norms, anomaly index over 2 (the paper's rule)"),
    # alpha 0.072 gives 2.447 at 10 labels, just above 2.444, the smallest threshold that flags at most 5%
    # of the clean models of the MNIST population's tune split (benchmarks/results/population_mnist.md).
    # It grows to 2.93 at 43 labels and 3.80 at 1,000; docs/results.md reports the test splits.
    "log-mad": Rule("log-mad", log_norms=True, threshold=2.0, alpha=0.072,
                    description="MAD of the log L1 norms; the threshold grows with the number of labels "
                                "(2.45 at 10, 2.93 at 43, 3.80 at 1,000; tuned on a model population)"),
}
# The default since 0.3. On the MNIST population's test split it flags the true target of 17 of 20
# infected models (published: 13) for 3 false alarms in 20 (published: 2); it leaves the clean GTSRB
# benchmark twin clean (published: flagged); at 1,000 labels the published rule flags a dozen natural
# labels. docs/experiments/2026-12-02-decision-rule.md has the figures.
DEFAULT_RULE = "log-mad"


def get_rule(rule: str | Rule, threshold: float | None = None) -> Rule:
    """A rule by name (or as given), with `threshold` replacing its own when given."""
    if isinstance(rule, str):
        try:
            rule = RULES[rule]
        except KeyError:
            raise ValueError(f"unknown rule {rule!r}; known: {', '.join(RULES)}") from None
    return rule if threshold is None else rule.with_threshold(threshold)
