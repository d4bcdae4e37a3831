"""Is the backdoor gone? A fresh scan of the patched model says, not the reversed trigger's own figures.

Unlearning or pruning against the scan's reversed trigger can make *that* pattern fail while the
real backdoor survives (a different trigger still reaches the label). So after every repair the
treated labels are reverse-engineered again on the patched model, beside enough other labels for
the median and MAD, and judged by the scan's own rule. Only when no treated label stands out any
more does the verdict say so ("no backdoor found by a rescan"); that is necessary, not sufficient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.detection.config import ReverseConfig
from neuralcleanse.detection.presets import PRESETS, ScanPlan
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.detection.scanner import NeuralCleanse
from neuralcleanse.data.trigger import Backdoor

# Not "backdoor removed": on the population, a label no longer flagged still carried a working real
# trigger (over 5% success) in 11 of 18 repaired models (docs/results.md). The rescan can only fail to find it.
REMOVED = "no backdoor found by a rescan"
PERSISTS = "backdoor may persist"
FILTERED = "backdoor still in the model; triggered inputs are filtered"
# Measured: pruning the units the reversed trigger excites hides the label from the rescan too, while
# the real trigger still worked on 18 of 20 population models (docs/results.md).
PRUNED_UNSEEN = "backdoor may persist: pruning also hides it from the rescan"


@dataclass
class Rescan:
    """The treated labels' norms and anomaly indices before (the scan) and after (a scan of the
    patched model), and whether any of them is still flagged."""

    treated: list[int]
    labels: list[int]
    norms_before: dict[int, float]
    norms_after: dict[int, float]
    index_before: dict[int, float]
    index_after: dict[int, float]
    flagged_after: list[int]
    rule: str
    wall_time: float = 0.0
    scan: ScanResult | None = field(default=None, repr=False, compare=False)

    def still_standing(self, every: bool = False) -> list[Backdoor]:
        """The fresh reversed triggers of the treated labels the rescan still flags (`every`: of all
        the treated labels, flagged or not)."""
        if self.scan is None:
            return []
        return [Backdoor(l, self.scan.trigger(l)) for l in self.treated if every or l in self.flagged_after]

    @property
    def removed(self) -> bool:
        return not set(self.flagged_after) & set(self.treated)

    @property
    def verdict(self) -> str:
        return REMOVED if self.removed else PERSISTS

    def summary(self) -> str:
        """Each treated label's norm and anomaly index, before -> after, in one line."""
        def pair(before: dict[int, float], after: dict[int, float], label: int, digits: int) -> str:
            return (f"{before[label]:.{digits}f} -> " if label in before else "") + f"{after[label]:.{digits}f}"

        return "; ".join(f"label {l}: L1 norm {pair(self.norms_before, self.norms_after, l, 1)}, anomaly index "
                         f"{pair(self.index_before, self.index_after, l, 2)}" for l in self.treated)

    def to_dict(self) -> dict[str, Any]:
        def table(d: dict[int, float]) -> dict[str, float | None]:
            return {str(k): (float(v) if v == v and abs(v) != float("inf") else None) for k, v in d.items()}

        return {"verdict": self.verdict, "backdoor_removed": self.removed, "rule": self.rule,
                "treated_labels": self.treated, "labels_rescanned": self.labels,
                "l1_norms_before": table(self.norms_before), "l1_norms_after": table(self.norms_after),
                "anomaly_index_before": table(self.index_before), "anomaly_index_after": table(self.index_after),
                "flagged_after": self.flagged_after, "wall_time_s": round(self.wall_time, 3)}


def labels_to_rescan(scan: ScanResult | None, treated: Sequence[int], others: int = 10,
                     num_classes: int = 0) -> list[int]:
    """The treated labels plus up to `others` more, spread evenly over the scan's norms (sorted),
    so the rescanned set has the original's median and spread; all labels when there are few.
    Without a scan, spread evenly over the `num_classes` labels."""
    if scan is None:
        rest = [l for l in range(num_classes) if l not in treated]
    else:
        rest = sorted((l for l in scan.labels if l not in treated),
                      key=lambda l: scan.l1_norms[scan.labels.index(l)])
    if len(rest) > others:
        step = len(rest) / others
        rest = [rest[int(i * step + step / 2)] for i in range(others)]
    return sorted(set(treated) | set(rest))


def scanner_like(scan: ScanResult | None, device: torch.device | str = "cpu",
                 detectors: Sequence[str] | None = None) -> NeuralCleanse:
    """A scanner with the settings the scan recorded (its preset's when they cannot be read; the
    defaults without a scan), running `detectors` (default: the scan's)."""
    if scan is None:
        return NeuralCleanse(device=device, progress=False, **({"detectors": detectors} if detectors else {}))
    settings = scan.settings or {}
    try:
        config = dict(settings["config"])
        config["betas"] = tuple(config.get("betas", (0.5, 0.9)))
        plan = ScanPlan(config=ReverseConfig(**config), samples=int(settings.get("samples", 1000)))
    except (KeyError, TypeError, ValueError):
        plan = PRESETS.get(str(settings.get("preset")), PRESETS["fast"])
    seed = settings.get("seed", 0)
    if detectors is None:
        # The rescan runs the tests the scan ran (scans from before 0.10 ran Neural Cleanse alone).
        recorded = settings.get("detectors")
        detectors = [d for d in recorded if isinstance(d, str)] if isinstance(recorded, list) else ["nc"]
    return NeuralCleanse(plan, rule=scan.rule, seed=seed if isinstance(seed, int) else 0, device=device,
                         progress=False, detectors=detectors or ["nc"])


def rescan(patched: nn.Module, scan: ScanResult | None, treated: Sequence[int], data: ImageDataset,
           device: torch.device | str = "cpu", others: int = 10, detectors: Sequence[str] | None = None) -> Rescan:
    """Scans `patched`'s treated labels beside `others` more on `data`, with the settings and rule of `scan`
    (the defaults when it is None: then the "before" figures are left empty), and its tests (or `detectors`)."""
    labels = labels_to_rescan(scan, treated, others, data.num_classes)
    scanner = scanner_like(scan, device, detectors)
    after = scanner.scan(patched, data, labels=labels)
    before = {} if scan is None else {l: scan.labels.index(l) for l in treated}
    return Rescan(
        treated=list(treated), labels=labels,
        norms_before={l: scan.l1_norms[i] for l, i in before.items()},
        norms_after={l: after.l1_norms[after.labels.index(l)] for l in treated},
        index_before={l: scan.outliers.label_indices[i] for l, i in before.items()},
        index_after={l: after.outliers.label_indices[labels.index(l)] for l in treated},
        flagged_after=after.flagged, rule=scanner.rule.name, wall_time=after.wall_time, scan=after)
