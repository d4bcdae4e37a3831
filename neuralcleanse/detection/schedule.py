"""How a scan spends its budget across labels: every label in full, or coarse to fine.

With 1,000 labels the full `fast` budget takes ~20 minutes on a 2-core CPU, and nearly all of it
confirms that ordinary labels are ordinary. Coarse to fine: a short pass over every label, then
the full budget only for
- the candidates: the labels with the smallest norms after the short pass (a backdoor's target is
  reached quickly with a small mask, so it is among them: docs/results.md, "Scale",
  measures where the target stood), and
- a reference: labels drawn at random from all of them, which estimate the median and MAD of
  full-budget norms without bias.

This is not the successive halving that was tried and dropped (docs/presets.md): there, the
labels dropped early kept their short-pass norms in the statistics. Here no short-pass norm
enters the outlier test; the candidates are compared with a random sample that got the same
budget as they did.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

SCHEDULES = ("auto", "full", "coarse-to-fine")


@dataclass(frozen=True)
class CoarseToFine:
    coarse_steps: int = 8
    candidate_share: float = 0.02
    min_candidates: int = 10
    reference: int = 48
    min_labels: int = 200  # under this, the full budget costs less than the candidates and reference would save

    def applies(self, schedule: str, n_labels: int) -> bool:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
        if schedule == "auto":
            return n_labels >= self.min_labels
        return schedule == "coarse-to-fine" and n_labels > self.min_candidates + self.reference

    def choose(self, labels: Sequence[int], norms: Sequence[float], reached: Sequence[bool],
               seed: int) -> tuple[list[int], list[int]]:
        """(candidates, reference). Labels that did not reach the attack threshold in the short
        pass rank after those that did: a backdoor's target is the easiest label to reach."""
        order = sorted(range(len(labels)), key=lambda i: (not reached[i], norms[i], labels[i]))
        k = min(len(labels), max(self.min_candidates, math.ceil(self.candidate_share * len(labels))))
        candidates = sorted(int(labels[i]) for i in order[:k])
        gen = torch.Generator().manual_seed(seed + 104_729)
        pick = torch.randperm(len(labels), generator=gen)[: min(self.reference, len(labels))]
        reference = sorted(int(labels[i]) for i in pick.tolist())
        return candidates, reference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
