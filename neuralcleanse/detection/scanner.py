"""Neural Cleanse as one object: settings in the constructor, `scan` does the work."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from neuralcleanse.attacks.trigger import Trigger
from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.detection.outlier import label_outliers
from neuralcleanse.detection.presets import ScanPlan, get_preset
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.detection.reverse_engineer import TriggerReverseEngineer
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import attack_success_rate


class NeuralCleanse:
    """Reverse-engineers a trigger for every label and flags outliers by their mask norms.

    >>> result = NeuralCleanse(preset="fast").scan(model, clean_data)
    >>> result.infected, result.flagged, result.anomaly_index
    """

    def __init__(
        self,
        preset: str | ScanPlan = "fast",
        *,
        samples: int | None = None,
        threshold: float = 2.0,
        device: str | torch.device = "cpu",
        seed: int = 0,
        block_size: int | None = None,
        eval_samples: int = 256,
        progress: bool = True,
        **config_overrides: Any,
    ) -> None:
        plan = get_preset(preset) if isinstance(preset, str) else preset
        self.preset_name = preset if isinstance(preset, str) else "custom"
        self.plan = replace(plan, config=plan.config.with_overrides(**config_overrides),
                            samples=samples or plan.samples)
        self.threshold = threshold
        self.device = torch.device(device)
        self.seed = seed
        self.block_size = block_size
        self.eval_samples = eval_samples
        self.progress = progress

    def scan(self, model: nn.Module, data: ImageDataset, labels: Sequence[int] | None = None,
             on_label_done: Callable[[int], None] | None = None) -> ScanResult:
        num_classes = int(getattr(model, "num_classes", 0) or data.num_classes)
        pool = self.select_samples(data, num_classes)
        start = time.perf_counter()
        # The engine freezes the weights for speed; the caller's model must come back trainable.
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:
            engine = TriggerReverseEngineer(model, pool.x, pool.y, num_classes, self.plan.config,
                                            device=self.device, block_size=self.block_size, seed=self.seed)
            return self._scan(engine, model, pool, num_classes, labels, on_label_done, start)
        finally:
            for p in trainable:
                p.requires_grad_(True)

    def _scan(self, engine: TriggerReverseEngineer, model: nn.Module, pool: ImageDataset, num_classes: int,
              labels: Sequence[int] | None, on_label_done: Callable[[int], None] | None,
              start: float) -> ScanResult:
        todo = list(range(num_classes)) if labels is None else sorted({int(v) for v in labels})
        if any(not 0 <= l < num_classes for l in todo):
            raise InputError(f"labels to scan must lie in 0..{num_classes - 1}")
        if len(todo) < 3:
            raise InputError("outlier analysis needs at least 3 labels")
        self._run_plan(engine, todo, on_label_done)
        found = {k: v[todo] for k, v in engine.results().items()}
        rates = self._success_rates(model, pool, found, todo)
        norms = [float(v) for v in found["l1"]]
        try:
            outliers = label_outliers(norms, todo, self.threshold)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        settings = {
            "preset": self.preset_name,
            "config": self.plan.config.to_dict(),
            "rounds": [list(r) for r in self.plan.rounds],
            "samples": len(pool),
            "block_size": engine.block_size,
            "device": str(self.device),
            "seed": self.seed,
            "threshold": self.threshold,
        }
        return ScanResult(
            labels=todo, masks=found["mask"], patterns=found["pattern"], l1_norms=norms, success_rates=rates,
            reached_threshold=[bool(v) for v in found["reached"]], steps=[int(v) for v in found["steps"]],
            outliers=outliers, settings=settings, wall_time=time.perf_counter() - start, passes=engine.passes,
        )

    def select_samples(self, data: ImageDataset, num_classes: int) -> ImageDataset:
        """A class-balanced draw of the clean samples the optimisation sees."""
        if len(data) == 0:
            raise InputError("the data holds no samples")
        if int(data.y.max()) >= num_classes or int(data.y.min()) < 0:
            raise InputError(f"data labels must lie in 0..{num_classes - 1} for a {num_classes}-label model")
        per_class = -(-self.plan.samples // num_classes)
        pool = data.per_class_sample(per_class, seed=self.seed)
        if len(pool) > self.plan.samples:
            pool = pool.random_sample(self.plan.samples, seed=self.seed)
        present = int(torch.unique(pool.y).numel())
        if present < 2:
            raise InputError("the scan needs clean samples of at least 2 labels")
        return pool

    def _run_plan(self, engine: TriggerReverseEngineer, labels: list[int],
                  on_label_done: Callable[[int], None] | None) -> None:
        rounds = self.plan.rounds or ((self.plan.config.max_steps, 1.0),)
        current = labels
        for i, (limit, keep) in enumerate(rounds):
            desc = "labels" if len(rounds) == 1 else f"round {i + 1}/{len(rounds)}"
            with tqdm(total=len(current), desc=desc, unit="label", disable=None if self.progress else True, leave=False) as bar:
                def done(label: int) -> None:
                    bar.update(1)
                    if on_label_done is not None and i == len(rounds) - 1:
                        on_label_done(label)
                engine.run(current, step_limit=limit, on_label_done=done)
            if i + 1 < len(rounds):
                norms = engine.results()["l1"]
                n_keep = max(self.plan.min_keep, int(round(keep * len(current))))
                current = sorted(current, key=lambda l: float(norms[l]))[:n_keep]

    def _success_rates(self, model: nn.Module, pool: ImageDataset, found: dict[str, torch.Tensor],
                       labels: list[int]) -> list[float]:
        """Measured afresh on a sample of the pool, for the best trigger kept (not the last one)."""
        sub = pool.random_sample(self.eval_samples, seed=self.seed + 7)
        return [
            attack_success_rate(model, sub, Trigger(found["mask"][i], found["pattern"][i]), label, device=self.device)
            for i, label in enumerate(labels)
        ]
