"""What the benchmarks share: the paper's BadNets models and their clean twins (trained once), the folders
results and models go to, and small helpers. Imported as `benchmarks.common`; it does nothing on import."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from neuralcleanse.attacks import BadNets, Trigger, patch_trigger
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.data import load_dataset
from neuralcleanse.models import load_model, save_checkpoint
from neuralcleanse.training import DEFAULTS, train_model

BENCHMARKS = Path(__file__).resolve().parent   # benchmarks/
RESULTS = BENCHMARKS / "results"               # the maintained benchmarks' current results (in git)
MODELS = BENCHMARKS / "models"                 # trained and cached models (git-ignored)
TARGETS = {"mnist": 7, "gtsrb": 33}


def benchmark_model(dataset: str, infected: bool, models_dir: Path, device: str = "cpu", log=print):
    """The BadNets model (4x4 white, bottom-right) or its clean twin; trained and saved if missing."""
    path = models_dir / f"{dataset}_{'badnets' if infected else 'clean'}.pt"
    if not path.exists():
        data = load_dataset(dataset)
        bn = None
        if infected:
            trigger = patch_trigger(data.train.input_shape, 4, "bottom-right", 1.0)
            bn = BadNets([trigger], [TARGETS[dataset]], 0.1)
        log(f"training {path.name} (not found) ...")
        model, report = train_model(data, dataset, badnets=bn, device=device, **DEFAULTS[dataset])
        save_checkpoint(model, path)
        log(f"  clean accuracy {report.clean_accuracy:.4f} attack success {report.attack_success}")
    return load_model(path), path


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings (values in JSON: 64, 0.05, "original") as settings to override."""
    return {k: json.loads(v) for k, v in (item.split("=", 1) for item in items)}


def run_meta(script: str, device: str) -> dict[str, Any]:
    """What a result file says about the run that made it."""
    return {"machine": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": device, "command": " ".join([f"python -m benchmarks.{script.removesuffix('.py')}", *sys.argv[1:]])}


def markdown_table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def mask_overlap(mask: torch.Tensor, true_mask: torch.Tensor) -> float:
    """Share of the reversed mask's L1 mass inside the real trigger's box (grown by 1 pixel)."""
    rows, cols = torch.nonzero(true_mask > 0, as_tuple=True)
    box = torch.zeros_like(mask)
    box[max(0, int(rows.min()) - 1): int(rows.max()) + 2, max(0, int(cols.min()) - 1): int(cols.max()) + 2] = 1
    return float((mask * box).sum() / mask.sum().clamp(min=1e-9))


def target_overlap(model, result) -> float | None:
    """mask_overlap of the known target's reversed mask, for a model that records its backdoor."""
    backdoor = model.info.metadata.get("backdoor") if hasattr(model, "info") else None
    if not backdoor or backdoor["targets"][0] not in result.labels:
        return None
    true = Trigger.from_dict(backdoor["triggers"][0])
    return round(mask_overlap(result.masks[result.labels.index(backdoor["targets"][0])], true.mask), 3)


def take_shard(rows: list, spec: str) -> list:
    """`spec` "I/N": every N-th row from the I-th, so N processes share a list (and a results file)."""
    return [row for position, row in enumerate(rows) if in_shard(position, spec)]


def in_shard(position: int, spec: str) -> bool:
    """Whether the row at `position` is shard "I/N"'s."""
    part, parts = (int(v) for v in spec.split("/"))
    return position % parts == part


def seed_triggers(model: torch.nn.Module, data, target: int, seeds: range, classes: int) -> list[Trigger]:
    """The target's reversed trigger from a `fast` scan (no restarts) with each seed. The scan also
    reverses the two next labels: its outlier analysis needs three, and they are not used."""
    labels = [target, (target + 1) % classes, (target + 2) % classes]
    return [NeuralCleanse("fast", progress=False, seed=seed, restarts=0).scan(model, data, labels=labels).trigger(target)
            for seed in seeds]
