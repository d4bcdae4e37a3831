"""Settings of trigger reverse-engineering, and the presets built from them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

LOSSES = ("cross_entropy", "original")


@dataclass(frozen=True)
class ReverseConfig:
    """One label's optimisation, as in the published Neural Cleanse code unless noted.

    A *step* is a pass over `samples_per_step` clean samples in batches of `batch_size`; the
    cost schedule and early stop count steps.

    loss: "cross_entropy" (default) or "original". The published code passed its arguments to
    Keras' categorical_crossentropy in swapped order, so what it really minimised is
    -log(1e-7)·(1 - p(target)); "original" reproduces that.
    exclude_target_samples: clean samples whose true label is the label under test carry no
    information about a trigger (they are already classified as it), so by default they are
    left out of that label's loss and success rate.
    start_cost: the cost before the schedule first sets it; the published code starts at 0
    and waits `patience` successful steps before setting `init_cost`.
    smoothness: weight β of the mask's total variation in the size penalty, which becomes
    cost·(|m|₁ + β·TV(m)) (TV: the summed absolute differences of neighbouring mask pixels). 0
    (the published penalty, and every preset's) lets a mask scatter into single pixels. Meant to
    make natural labels' scattered masks cost more than a compact planted patch; on the MNIST model
    population it did not separate them better on held-out models (docs/presets.md).
    """

    max_steps: int = 1000
    samples_per_step: int = 1000
    batch_size: int = 32
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.9)
    init_cost: float = 1e-3
    start_cost: float = 0.0
    attack_threshold: float = 0.99
    patience: int = 5
    cost_multiplier_up: float = 2.0
    cost_multiplier_down: float = 2.0 ** 1.5
    early_stop_patience: int = 25
    early_stop_threshold: float = 0.99
    loss: str = "cross_entropy"
    exclude_target_samples: bool = True
    smoothness: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}")
        if self.batch_size < 1 or self.samples_per_step < 1 or self.max_steps < 1:
            raise ValueError("batch_size, samples_per_step and max_steps must be positive")
        if not (self.smoothness >= 0.0 and self.smoothness < float("inf")):
            raise ValueError(f"smoothness must be a finite number of at least 0, got {self.smoothness}")
        if not 0.0 < self.attack_threshold <= 1.0:
            raise ValueError("attack_threshold must lie in (0, 1]")

    @property
    def batches_per_step(self) -> int:
        return max(1, self.samples_per_step // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def with_overrides(self, **kw: Any) -> "ReverseConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})
