"""Models the benchmarks share: the paper's BadNets models and their clean twins, trained once."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuralcleanse.attacks import BadNets, patch_trigger  # noqa: E402
from neuralcleanse.data import load_dataset  # noqa: E402
from neuralcleanse.models import load_model, save_checkpoint  # noqa: E402
from neuralcleanse.training import DEFAULTS, train_model  # noqa: E402

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


def markdown_table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
