"""Detection on the benchmark models: each BadNets model and its clean twin, trained and scanned, in one table.

    python -m benchmarks.detection_results [--preset fast] [--datasets mnist gtsrb]

Per model: clean accuracy, attack success, the scan's verdict, flagged labels, anomaly index, the
target's reversed-trigger norm, and how much of the reversed mask lies on the real trigger. The
MNIST BadNets model is also exported to TorchScript (outside the tool's format) and scanned that way.
Writes benchmarks/results/detection.json and .md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import benchmark_model, markdown_table, target_overlap
from neuralcleanse.attacks import Trigger
from neuralcleanse.data import load_dataset
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.metrics import attack_success_rate, clean_accuracy
from neuralcleanse.models import load_model

ROOT = Path(__file__).resolve().parent


def scan_row(name: str, model, data, preset: str, device: str) -> dict:
    start = time.perf_counter()
    result = NeuralCleanse(preset, device=device, progress=False).scan(model, data)
    row = {"model": name, "preset": preset, "infected": result.infected, "flagged": result.flagged,
           "anomaly_index": round(result.anomaly_index, 2), "median_l1": round(result.outliers.median, 1),
           "scan_s": round(time.perf_counter() - start, 1)}
    backdoor = model.info.metadata.get("backdoor") if hasattr(model, "info") else None
    if backdoor:
        target = backdoor["targets"][0]
        true = Trigger.from_dict(backdoor["triggers"][0])
        row["target"] = target
        row["target_l1"] = round(result.l1_norms[target], 2)
        row["true_trigger_l1"] = true.l1
        row["mask_on_true_trigger"] = target_overlap(model, result)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mnist", "gtsrb"])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "detection")
    args = ap.parse_args()
    rows = []
    for dataset in args.datasets:
        data = load_dataset(dataset)
        for infected in (True, False):
            model, path = benchmark_model(dataset, infected, args.models_dir, args.device)
            name = path.stem
            row = scan_row(name, model, data.test, args.preset, args.device)
            row["clean_accuracy"] = round(clean_accuracy(model, data.test), 4)
            if infected:
                bd = model.info.metadata["backdoor"]
                row["attack_success"] = round(attack_success_rate(model, data.test, Trigger.from_dict(
                    bd["triggers"][0]), bd["targets"][0]), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if infected and dataset == "mnist":
                # A model file made outside the tool: the bare network, traced, no metadata.
                with tempfile.TemporaryDirectory() as tmp:
                    ts_path = Path(tmp) / "model.torchscript.pt"
                    torch.jit.trace(model.net.eval(), torch.zeros(1, *model.input_shape)).save(str(ts_path))
                    ts_model = load_model(ts_path, num_classes=model.num_classes, input_shape=model.input_shape)
                    ts_model.info.metadata["backdoor"] = model.info.metadata["backdoor"]
                    ts_row = scan_row(name + " (TorchScript)", ts_model, data.test, args.preset, args.device)
                ts_row["clean_accuracy"] = row["clean_accuracy"]
                rows.append(ts_row)
                print(json.dumps(ts_row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    cols = ["model", "clean_accuracy", "attack_success", "infected", "flagged", "anomaly_index", "target_l1",
            "true_trigger_l1", "mask_on_true_trigger", "median_l1", "scan_s"]
    table = markdown_table(rows, cols)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
