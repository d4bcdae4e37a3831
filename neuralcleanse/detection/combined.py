"""One verdict from several tests (detection/evidence.py): Neural Cleanse's trigger size, MM-BD's maximum
logit margin and the neuron-noise test look at different things, so they err on different models.

Each test's evidence is a p-value of the label it points at, against its own null. The combination:

- the model's p-value is the smallest of them, Bonferroni-corrected for the number of tests that ran, and
  its score (for ranking models, and ROC curves) is −log10 of it;
- a test "speaks" when its p-value is at most its level divided by that number (the same correction);
- **infected** when the tests that speak name one label and at least `quorum` of them speak (the label
  named is flagged), or when Neural Cleanse's own rule flags labels that a second test confirms;
- **inconclusive** when tests speak but disagree on the label, or fewer than `quorum` speak: one test alone
  flagged a model in a way the populations showed to be uninformative (docs/results.md); the page says which;
- **clean** when no test speaks.

The rule's numbers were chosen on the populations' tune splits only (docs/results.md has the measurements).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from neuralcleanse.detection.evidence import Evidence

TESTS = ("nc", "noise", "mmbd")
NAMES = {"nc": "Neural Cleanse (trigger size)", "noise": "neuron noise", "mmbd": "MM-BD (maximum margin)"}


@dataclass(frozen=True)
class CombineRule:
    """`quorum`: how many tests must speak, on one label, for an "infected" verdict."""

    quorum: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.quorum, int) or isinstance(self.quorum, bool) or not 1 <= self.quorum <= len(TESTS):
            raise ValueError(f"quorum must be a whole number from 1 to {len(TESTS)}, got {self.quorum!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"quorum": self.quorum}

    @classmethod
    def from_dict(cls, d: Any) -> "CombineRule":
        if not isinstance(d, dict):
            raise ValueError("the combination rule is not recorded as an object")
        return cls(**{k: d[k] for k in ("quorum",) if k in d})


@dataclass
class Combined:
    verdict: str
    flagged: list[int]
    p_value: float
    reason: str
    speaking: dict[str, int] = field(default_factory=dict)  # test → the label it names
    rule: CombineRule = field(default_factory=CombineRule)

    @property
    def score(self) -> float:
        return -math.log10(max(self.p_value, 1e-300))

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "flagged": self.flagged, "p_value": self.p_value,
                "score": round(self.score, 4), "reason": self.reason, "speaking": self.speaking,
                "rule": self.rule.to_dict()}


def combine(evidence: Mapping[str, Evidence], rule: CombineRule = CombineRule(),
            nc_flagged: Sequence[int] = ()) -> Combined:
    """`nc_flagged`: every label Neural Cleanse's own rule flags (several infected labels are flagged
    together when it speaks)."""
    ran = {name: e for name, e in evidence.items() if e.ran}
    if not ran:
        return Combined("clean", [], 1.0, "no test could run", {}, rule)
    m = len(ran)
    p_model = min(1.0, m * min(e.p_value for e in ran.values()))
    speaking = {name: int(e.candidate) for name, e in ran.items() if e.p_value <= e.alpha / m}
    labels = sorted(set(speaking.values()))
    if not speaking:
        return Combined("clean", [], p_model, "no test found a label that stands out", speaking, rule)
    names = ", ".join(NAMES.get(n, n) for n in speaking)
    if len(labels) > 1:
        said = "; ".join(f"{NAMES.get(n, n)} label {l}" for n, l in speaking.items())
        return Combined("inconclusive", [], p_model, f"the tests point at different labels ({said})", speaking, rule)
    if len(speaking) < rule.quorum:
        return Combined("inconclusive", [], p_model,
                        f"only {names} found label {labels[0]} standing out; {rule.quorum} tests must agree",
                        speaking, rule)
    flagged = sorted(set(labels) | (set(nc_flagged) if "nc" in speaking else set()))
    return Combined("infected", flagged, p_model, f"{names} agree on label {labels[0]}", speaking, rule)
