"""Scans of a 1,000-label model: the coarse-to-fine schedule against the full `fast` preset.

    python -m benchmarks.many_labels                       # both models, both schedules
    python -m benchmarks.many_labels --schedules coarse    # the quick one only
    python -m benchmarks.many_labels --build-only          # train and cache the two models

The task is `mnist-triples` (three MNIST digits side by side, 1x28x84, labels 000-999;
neuralcleanse/data/mnist_triples.py). Two models of the paper's MNIST net shape are trained on it
with the package's `train_model`, from fixed seeds, and cached in benchmarks/models/many_labels/
(git-ignored; rebuilt when missing, about 6 min each on the project's 2-core CPU): a BadNets model
(4x4 white square, bottom-right corner, target 417, 10% poison) and its clean twin (same seed, no
poison).

Each row records the verdict, the flagged labels, the time and, for the coarse-to-fine schedule,
where the target stood after the short pass (its norm and rank among all 1,000 labels): the
measurement that says whether a label dropped early could have hidden an outlier. Rows are
appended to benchmarks/results/many_labels.jsonl as they finish; the table is rewritten from it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import markdown_table, run_meta
from neuralcleanse.attacks import BadNets, patch_trigger
from neuralcleanse.data import load_dataset
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.models import load_model, save_checkpoint
from neuralcleanse.training import train_model

ROOT = Path(__file__).resolve().parent
TARGET = 417
EPOCHS, LR, SEED = 4, 1e-3, 0


def build(kind: str, models_dir: Path, data) -> Path:
    path = models_dir / f"triples_{kind}.pt"
    if path.exists():
        return path
    bn = None
    if kind == "badnets":
        bn = BadNets([patch_trigger(data.train.input_shape, 4, "bottom-right", 1.0)], [TARGET], 0.1, seed=SEED)
    start = time.perf_counter()
    model, report = train_model(data, "mnist", badnets=bn, epochs=EPOCHS, lr=LR, seed=SEED, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, path)
    print(f"built {path.name} in {time.perf_counter() - start:.0f}s: clean accuracy {report.clean_accuracy:.4f}, "
          f"attack success {report.attack_success}", flush=True)
    return path


def scan_row(kind: str, path: Path, data, schedule: str, seed: int) -> dict:
    model = load_model(path)
    start = time.perf_counter()
    result = NeuralCleanse("fast", schedule=schedule, seed=seed, progress=False).scan(model, data.test)
    wall = time.perf_counter() - start
    norms = dict(zip(result.labels, result.l1_norms))
    row = {"model": kind, "schedule": schedule, "seed": seed, "verdict": result.verdict, "flagged": result.flagged,
           "anomaly_index": result.anomaly_index, "wall_time_s": round(wall, 1), "labels_full": len(result.labels),
           "image_passes": result.passes, "target_l1": norms.get(TARGET), "median_l1": float(np.median(result.l1_norms))}
    coarse = result.settings.get("coarse")
    if coarse:  # where every label stood after the short pass
        c = dict(zip(coarse["labels"], coarse["l1_norms"]))
        ranked = sorted(c, key=c.get)
        row.update(coarse_target_l1=c.get(TARGET), coarse_target_rank=ranked.index(TARGET) + 1 if TARGET in c else None,
                   coarse_smallest=[[int(l), round(c[l], 1)] for l in ranked[:5]],
                   coarse_median=float(np.median(list(c.values()))), candidates=coarse["candidates"],
                   coarse_steps=coarse["steps"],
                   reference=len(coarse["reference"]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=("badnets", "clean"), default=["badnets", "clean"])
    ap.add_argument("--schedules", nargs="+", choices=("coarse", "full"), default=["coarse", "full"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models" / "many_labels")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "many_labels.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist-triples")
    paths = {kind: build(kind, args.models_dir, data) for kind in args.models}
    if args.build_only:
        return
    meta = run_meta("many_labels.py", "cpu")
    for kind in args.models:
        for schedule in args.schedules:
            row = {**scan_row(kind, paths[kind], data, {"coarse": "coarse-to-fine", "full": "full"}[schedule],
                              args.seed), **meta}
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("model", "schedule", "verdict", "flagged", "anomaly_index",
                                                   "wall_time_s")}), flush=True)
    rows = [json.loads(line) for line in open(args.out)]
    table = markdown_table(rows, ["model", "schedule", "seed", "verdict", "flagged", "anomaly_index", "wall_time_s",
                                  "labels_full", "target_l1", "median_l1", "coarse_target_rank", "coarse_target_l1",
                                  "coarse_median"])
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
