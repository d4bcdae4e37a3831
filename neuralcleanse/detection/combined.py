"""One verdict from several tests (detection/evidence.py): Neural Cleanse's trigger size, the neuron-noise test
and MM-BD's maximum logit margin look at different things, so they err on different models.

Each test's evidence is a p-value of the label it points at, against its own null. The tests that `count`
(CombineRule) decide; the others are reported beside them (advisory). Among the counting tests that ran:

- the model's p-value is the smallest of theirs, Bonferroni-corrected for how many ran, and its score (for
  ranking models, and ROC curves) is −log10 of it;
- a test *speaks* when its p-value is at most its own level divided by that number (the same correction);
- **infected** when at least `quorum` tests speak (the labels they name are flagged, with every label Neural
  Cleanse's own rule flags when it speaks); **inconclusive** when fewer than `quorum` speak but one does;
  **clean** when none speaks.

The rule's settings were chosen on the populations' tune splits (docs/results.md): MM-BD, which flags a natural
class of every clean batch-norm network on MNIST, is advisory.
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
    """`count`: the tests whose evidence decides (the others are advisory); `quorum`: how many of them must
    speak for an "infected" verdict."""

    count: tuple[str, ...] = ("nc", "noise")
    quorum: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", tuple(self.count))
        if not self.count or not set(self.count) <= set(TESTS):
            raise ValueError(f"count must name tests among {', '.join(TESTS)}, got {self.count!r}")
        if not isinstance(self.quorum, int) or isinstance(self.quorum, bool) or not 1 <= self.quorum <= len(TESTS):
            raise ValueError(f"quorum must be a whole number from 1 to {len(TESTS)}, got {self.quorum!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"count": list(self.count), "quorum": self.quorum}

    @classmethod
    def from_dict(cls, d: Any) -> "CombineRule":
        if not isinstance(d, dict):
            raise ValueError("the combination rule is not recorded as an object")
        count = d.get("count", cls.count)
        if not isinstance(count, (list, tuple)) or not all(isinstance(t, str) for t in count):
            raise ValueError("the combination rule's tests are not a list of names")
        return cls(tuple(count), d.get("quorum", 1))


@dataclass
class Combined:
    verdict: str
    flagged: list[int]
    p_value: float
    reason: str
    speaking: dict[str, int] = field(default_factory=dict)  # counting test → the label it names
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
    ran = {name: e for name, e in evidence.items() if e.ran and name in rule.count}
    if not ran:
        return Combined("clean", [], 1.0, "no counting test could run", {}, rule)
    m = len(ran)
    p_model = min(1.0, m * min(e.p_value for e in ran.values()))
    speaking = {name: int(e.candidate) for name, e in ran.items() if e.speaks(m)}
    advisory = _advisory(evidence, rule)
    if not speaking:
        return Combined("clean", [], p_model, "no test found a label that stands out" + advisory, speaking, rule)
    said = "; ".join(f"{NAMES.get(n, n)}: label {label}" for n, label in speaking.items())
    if len(speaking) < rule.quorum:
        return Combined("inconclusive", [], p_model,
                        f"only {said} stands out, and {rule.quorum} tests must speak" + advisory, speaking, rule)
    flagged = sorted(set(speaking.values()) | (set(nc_flagged) if "nc" in speaking else set()))
    agree = len(set(speaking.values())) == 1
    silent = [NAMES.get(n, n) for n in ran if n not in speaking]
    alone = (f", by this test alone ({' and '.join(silent)}: no label stands out)" if silent else
             ", by the only counting test that could run")
    reason = (f"{said} stands out{alone}" if len(speaking) == 1 else
              f"{' and '.join(NAMES.get(n, n) for n in speaking)} agree on label {flagged[0]}" if agree else
              f"the tests name different labels ({said})")
    return Combined("infected", flagged, p_model, reason + advisory, speaking, rule)


def _advisory(evidence: Mapping[str, Evidence], rule: CombineRule) -> str:
    """What the tests that do not count said, for the reason's sentence."""
    notes = [f"{NAMES.get(n, n)} points at label {e.candidate} (p {e.p_value:.2g})"
             for n, e in evidence.items() if n not in rule.count and e.ran and e.flagged]
    return f" ({'; '.join(notes)}; advisory)" if notes else ""
