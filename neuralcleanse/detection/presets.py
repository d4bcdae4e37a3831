"""Named scan settings: `original` reproduces the published budget, `fast` is the default."""
from __future__ import annotations

from dataclasses import dataclass, field

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
        config=ReverseConfig(samples_per_step=128, start_cost=1e-3, max_steps=60, early_stop_patience=10),
        description="Steps of 128 samples (4 batches of 32) instead of ~1,000, so the cost schedule reacts "
        "8x sooner; the cost starts at 1e-3 instead of waiting at 0; at most 60 steps and early stop after "
        "10 steps without 1% improvement. See docs/presets.md for what was measured.",
    ),
}


def get_preset(name: str) -> ScanPlan:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
