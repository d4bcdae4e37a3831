"""Named scan settings: `original` reproduces the published budget, `fast` is the default."""
from __future__ import annotations

from dataclasses import dataclass

from neuralcleanse.detection.config import ReverseConfig


@dataclass(frozen=True)
class ScanPlan:
    """How a scan spends its budget: each label's optimisation settings and how many clean
    samples it draws from. (Successive-halving rounds were tried and removed: the labels dropped
    early keep large, unconverged norms that inflate the MAD and hide the planted trigger;
    docs/presets.md.)"""

    config: ReverseConfig
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
