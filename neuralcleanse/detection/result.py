"""What a scan found, with named fields."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neuralcleanse.data.trigger import Trigger
from neuralcleanse.detection.combined import Combined, CombineRule, combine
from neuralcleanse.detection.evidence import Evidence, bonferroni_normal
from neuralcleanse.detection.outlier import OutlierResult
from neuralcleanse.detection.rules import Rule, get_rule


@dataclass
class ScanResult:
    """Per scanned label (in `labels` order, all labels by default): the reversed trigger, its L1
    norm and success rate. `outliers.flagged` holds label ids, not positions.

    A coarse-to-fine scan returns only the labels it gave the full budget: `reference_labels` (a
    random sample whose norms estimate the median and MAD; None: all labels do) and the
    candidates, while `tested_labels` counts every label the short pass looked at.

    With second opinions (`NeuralCleanse(detectors=...)`), `evidence` holds each test's finding and
    `combined` the verdict reached from them (detection/combined.py); `verdict` and `flagged` are then
    the combined ones, and Neural Cleanse's own are `evidence["nc"]` and `outliers`."""

    labels: list[int]
    masks: torch.Tensor            # (L, H, W)
    patterns: torch.Tensor         # (L, C, H, W)
    l1_norms: list[float]
    success_rates: list[float]
    reached_threshold: list[bool]
    steps: list[int]
    outliers: OutlierResult
    settings: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    passes: int = 0
    rule: Rule = field(default_factory=lambda: get_rule("published"))
    verdict: str = ""
    reference_labels: list[int] | None = None
    tested_labels: int | None = None
    evidence: dict[str, Evidence] = field(default_factory=dict)
    combined: Combined | None = None

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = self.nc_verdict

    @property
    def nc_verdict(self) -> str:
        """Neural Cleanse's own verdict, by its rule on the norms."""
        return self.rule.verdict(self.outliers, self.l1_norms, int(self.masks[0].numel()))

    @property
    def infected(self) -> bool:
        return self.verdict == "infected"

    def with_evidence(self, second: dict[str, Evidence], rule: CombineRule = CombineRule()) -> "ScanResult":
        """This result judged by Neural Cleanse's evidence and the second opinions together."""
        self.evidence = {"nc": nc_evidence(self), **second}
        self.combined = combine(self.evidence, rule, nc_flagged=list(self.outliers.flagged))
        self.verdict = self.combined.verdict
        return self

    @classmethod
    def judged(cls, rule: Rule, labels: list[int], l1_norms: list[float], reference_labels: list[int] | None = None,
               tested_labels: int | None = None, **fields: Any) -> "ScanResult":
        """A result whose outliers and verdict follow from `rule` applied to the norms."""
        return cls(labels=labels, l1_norms=l1_norms,
                   outliers=rule.outliers(l1_norms, labels, reference_labels, tested_labels), rule=rule,
                   reference_labels=reference_labels, tested_labels=tested_labels, **fields)

    @property
    def flagged(self) -> list[int]:
        return list(self.combined.flagged) if self.combined is not None else list(self.outliers.flagged)

    @property
    def score(self) -> float:
        """How suspicious the model is, one number (higher: more): the combined evidence's −log10 p-value,
        or without second opinions Neural Cleanse's anomaly index."""
        return self.combined.score if self.combined is not None else self.anomaly_index

    @property
    def anomaly_index(self) -> float:
        return self.outliers.anomaly_index

    @property
    def num_labels(self) -> int:
        return len(self.l1_norms)

    def trigger(self, label: int) -> Trigger:
        i = self.labels.index(label)
        return Trigger(self.masks[i], self.patterns[i])

    @classmethod
    def from_dict(cls, d: dict[str, Any], masks: torch.Tensor, patterns: torch.Tensor) -> "ScanResult":
        """Rebuilds a result from `to_dict()`'s output and the exact masks and patterns."""
        labels = [int(v) for v in d["labels"]]
        norms = [float(v) for v in d["l1_norms"]]
        # Reports from before rules were recorded used the published rule with their threshold.
        rule = Rule.from_dict(d["rule"]) if "rule" in d else get_rule("published", float(d.get("threshold", 2.0)))
        reference = d.get("reference_labels")
        result = cls.judged(rule, labels, norms, None if reference is None else [int(v) for v in reference],
                            None if d.get("tested_labels") is None else int(d["tested_labels"]), masks=masks,
                            patterns=patterns, success_rates=[float(v) for v in d["success_rates"]],
                            reached_threshold=[bool(v) for v in d["reached_threshold"]],
                            steps=[int(v) for v in d["steps"]], settings=dict(d.get("settings", {})),
                            wall_time=float(d.get("wall_time_s", 0.0)), passes=int(d.get("image_passes", 0)))
        detectors = d.get("detectors") or {}
        if detectors:
            second = {name: Evidence.from_dict(e) for name, e in detectors.items() if name != "nc"}
            result.with_evidence(second, CombineRule.from_dict((d.get("combined") or {}).get("rule", {})))
        return result

    def to_dict(self) -> dict[str, Any]:
        o = self.outliers
        norms = [float(v) for v in self.l1_norms]
        reference = None if self.reference_labels is None else set(self.reference_labels)
        combined = {} if self.combined is None else {
            "score": round(self.score, 4), "combined": self.combined.to_dict(),
            "detectors": {name: e.to_dict() for name, e in self.evidence.items()}}
        return {
            "verdict": self.verdict,
            "infected": self.infected,
            **combined,
            "rule": self.rule.to_dict(),
            "labels": [int(v) for v in self.labels],
            "flagged": self.flagged,
            "tested_labels": self.tested_labels or len(self.labels),
            "reference_labels": self.reference_labels,
            "anomaly_index": _finite_or_none(o.anomaly_index),
            "median_l1": float(np.median(norms if reference is None else
                                         [n for label, n in zip(self.labels, norms) if label in reference])),
            "mad": o.mad,
            "mad_x_1_4826": o.consistent_mad,
            "mad_of": "log L1 norms" if self.rule.log_norms else "L1 norms",
            "min_l1": min(norms),
            "flag_below_l1": self.rule.cut(o),
            "threshold": o.threshold,
            "l1_norms": [float(v) for v in self.l1_norms],
            "label_anomaly_index": [_finite_or_none(v) for v in o.label_indices],
            "success_rates": [float(v) for v in self.success_rates],
            "reached_threshold": [bool(v) for v in self.reached_threshold],
            "steps": [int(v) for v in self.steps],
            "settings": self.settings,
            "wall_time_s": round(self.wall_time, 3),
            "image_passes": int(self.passes),
        }


def _finite_or_none(v: float) -> float | None:
    # JSON has no Infinity; a zero MAD gives an infinite index, written as null with a note.
    return float(v) if v == v and abs(v) != float("inf") else None


def nc_evidence(result: ScanResult) -> Evidence:
    """Neural Cleanse's finding as evidence: the label with the smallest reversed trigger, and the
    Bonferroni p-value of its anomaly index among the labels tested (what the count-aware rule tests);
    its level is the rule's."""
    tested = result.tested_labels or len(result.labels)
    position = int(np.argmin(result.l1_norms))
    # The level of the threshold the rule applied (its alpha's, or its floor's where that is higher).
    alpha = bonferroni_normal(result.outliers.threshold, tested)
    indices = result.outliers.label_indices
    median = result.outliers.median
    values = np.log(np.maximum(result.l1_norms, 1e-6)) if result.rule.log_norms else np.asarray(result.l1_norms)
    signed = [float(i) if v < median else -float(i) for i, v in zip(indices, values)]
    return Evidence("nc", list(result.labels), signed, int(result.labels[position]),
                    bonferroni_normal(result.outliers.anomaly_index, tested), float(alpha),
                    statistic=result.outliers.anomaly_index,
                    details={"flagged": list(result.outliers.flagged), "rule": result.rule.name,
                             "threshold": result.outliers.threshold, "verdict": result.nc_verdict},
                    wall_time=result.wall_time)
