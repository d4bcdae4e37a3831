"""One test's evidence about one model, in a form every test shares, so that tests can be shown side by side
and combined: a statistic per label (higher: more suspicious), the label the test points at, and a p-value
of that label against the test's own null (small: the label stands out)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Evidence:
    """`test`: "nc" (Neural Cleanse: trigger size), "mmbd" (maximum logit margin), "noise" (neuron noise).
    `candidate`: the label the test points at; `p_value`: of that label against the test's null (None when
    the test could not run on this model: `note` says why); `alpha`: the test's own level, at which it flags
    the model alone."""

    test: str
    labels: list[int]
    scores: list[float]
    candidate: int | None
    p_value: float | None
    alpha: float
    statistic: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    note: str = ""

    @property
    def ran(self) -> bool:
        return self.p_value is not None

    @property
    def flagged(self) -> bool:
        """Whether the test alone flags the model: the label it points at stands out at its level."""
        return self.speaks(1)

    def speaks(self, tests: int = 1) -> bool:
        """Whether the label it points at stands out at its level shared among `tests` tests (Bonferroni).
        A level of 0 never flags, even a p-value that underflowed to 0."""
        return self.ran and self.alpha > 0 and self.p_value <= self.alpha / tests

    @property
    def flagged_labels(self) -> list[int]:
        return [self.candidate] if self.flagged else []

    @property
    def verdict(self) -> str:
        """The test's own verdict: "infected", "clean", or "not run" (`note` says why)."""
        return "not run" if not self.ran else "infected" if self.flagged else "clean"

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "verdict": self.verdict, "flagged": self.flagged, "candidate": self.candidate,
                "p_value": _number(self.p_value), "alpha": self.alpha, "statistic": _number(self.statistic),
                "labels": [int(v) for v in self.labels], "scores": [_number(v) for v in self.scores],
                "details": self.details, "wall_time_s": round(self.wall_time, 3),
                **({"note": self.note} if self.note else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Evidence":
        return cls(str(d["test"]), [int(v) for v in d["labels"]],
                   [float("nan") if v is None else float(v) for v in d["scores"]],
                   None if d.get("candidate") is None else int(d["candidate"]),
                   None if d.get("p_value") is None else float(d["p_value"]), float(d["alpha"]),
                   None if d.get("statistic") is None else float(d["statistic"]), dict(d.get("details") or {}),
                   float(d.get("wall_time_s", 0.0)), str(d.get("note", "")))

    @classmethod
    def not_run(cls, test: str, alpha: float, why: str) -> "Evidence":
        return cls(test, [], [], None, None, alpha, note=why)


def bonferroni_normal(z: float, tested: int) -> float:
    """The p-value of the most extreme of `tested` labels sitting `z` robust standard deviations out, one-sided,
    Bonferroni-corrected: what a count-aware MAD threshold tests (z ≥ Φ⁻¹(1 − α/n) ⇔ p ≤ α)."""
    if not math.isfinite(z):
        return 0.0 if z > 0 else 1.0
    # erfc keeps the tail's precision far beyond 1 − Φ(z), which is 0 from z ≈ 8.3 on.
    return float(min(1.0, tested * 0.5 * math.erfc(z / math.sqrt(2.0))))


def largest_of_gamma(statistics: list[float]) -> tuple[int, float]:
    """MM-BD's null: a Gamma fitted (shape, location and scale) to every label's statistic but the largest,
    and the p-value of the largest as the maximum of K draws from it, 1 − F(r_max)^K. Returns the position
    of the largest and its p-value."""
    from scipy import stats

    values = np.asarray(statistics, dtype=np.float64)
    top = int(np.argmax(values))
    rest = np.delete(values, top)
    if len(rest) < 2 or float(np.ptp(rest)) == 0.0:
        return top, 0.0 if values[top] > rest.max(initial=-np.inf) else 1.0
    with np.errstate(all="ignore"):
        try:
            shape, loc, scale = stats.gamma.fit(rest)
            cdf = float(stats.gamma.cdf(values[top], shape, loc=loc, scale=scale))
        except (ValueError, RuntimeError, FloatingPointError):
            cdf = float("nan")
    if not math.isfinite(cdf):  # a fit that failed: the moments' Gamma, located at zero
        mean, var = float(rest.mean()), float(rest.var())
        cdf = float(stats.gamma.cdf(values[top], mean * mean / var, scale=var / mean)) if mean > 0 and var > 0 else 1.0
    return top, float(1.0 - cdf ** len(values))


def _number(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)
