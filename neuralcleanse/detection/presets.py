"""Named scan settings: `original` reproduces the published budget, `fast` is the default."""
from __future__ import annotations

from dataclasses import dataclass

from neuralcleanse.detection.config import ReverseConfig


@dataclass(frozen=True)
class ScanPlan:
    """How a scan spends its budget.

    rounds: successive-halving rounds as (step limit, share of labels kept). Every label runs
    up to the first limit; then only the `keep` share with the smallest norms so far (never
    fewer than `min_keep`) continues to the next limit. The median of the norms is robust to the
    upper half being estimated from fewer steps, and the labels that decide the verdict (the
    smallest) get the full budget. An empty tuple runs every label to its own stop.
    """

    config: ReverseConfig
    rounds: tuple[tuple[int, float], ...] = ()
    min_keep: int = 3
    samples: int = 1000
    description: str = ""


PRESETS: dict[str, ScanPlan] = {
    "original": ScanPlan(
        config=ReverseConfig(),
        description="The published Neural Cleanse budget and schedule: 1,000 samples, steps of ~1,000 "
        "samples in batches of 32, cost from 0, early stop after 25 steps without 1% improvement.",
    ),
    "fast": ScanPlan(
        config=ReverseConfig(batch_size=8, samples_per_step=32, start_cost=1e-3, patience=2, max_steps=96,
                             early_stop_patience=20),
        description="Batches of 8 in steps of 32 samples (4 Adam updates a step instead of 31 for ~1,000 "
        "samples), cost 1e-3 from the start, patience 2, early stop after 20 steps without 1% gain, at most "
        "96 steps (3,072 image passes) per label. See docs/presets.md for what was measured.",
    ),
}


def get_preset(name: str) -> ScanPlan:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
