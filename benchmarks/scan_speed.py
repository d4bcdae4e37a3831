"""Scan speed and quality, per model and preset, in one process and one table.

    .venv/bin/python benchmarks/scan_speed.py                # all four models, both presets
    .venv/bin/python benchmarks/scan_speed.py --datasets mnist --presets fast

Writes benchmarks/results/scan_speed.json and .md. Where the `original` preset would run for
hours (GTSRB on a CPU), it runs on a subset of labels (the known target plus others) and its
wall time is extrapolated to all labels by labels scanned; the table says so.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from common import TARGETS, benchmark_model
from neuralcleanse.data import load_dataset
from neuralcleanse.detection import NeuralCleanse, get_preset
from neuralcleanse.detection.reverse_engineer import choose_block_size

ROOT = Path(__file__).resolve().parent


def raw_throughput(model, input_shape, batch: int, device: torch.device, seconds: float = 5.0) -> float:
    """Images per second of the model's forward and backward pass (to the input) at `batch`."""
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand((batch, *input_shape), device=device, requires_grad=True)
    def once():
        out = model(x)
        (g,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
        return g
    once()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        once()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mnist", "gtsrb"])
    ap.add_argument("--presets", nargs="+", default=["fast", "original"])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--original-subset", type=int, default=5,
                    help="labels for `original` on datasets listed in --subset-datasets")
    ap.add_argument("--subset-datasets", nargs="*", default=["gtsrb"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "scan_speed")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for dataset in args.datasets:
        data = load_dataset(dataset).test
        for infected in (True, False):
            model, path = benchmark_model(dataset, infected, args.models_dir, str(device))
            name = f"{dataset}-{'badnets' if infected else 'clean'}"
            for preset in args.presets:
                labels = None
                note = ""
                L = model.num_classes
                if preset == "original" and dataset in args.subset_datasets:
                    others = [l for l in range(L) if l != TARGETS[dataset]]
                    labels = sorted([TARGETS[dataset]] + others[: args.original_subset - 1])
                    note = f"subset of {len(labels)} labels {labels}; time extrapolated ×{L}/{len(labels)}"
                scanner = NeuralCleanse(preset, device=device, progress=False)
                batch = get_preset(preset).config.batch_size
                block = choose_block_size(model, model.input_shape, batch, len(labels or range(L)), device)
                raw = raw_throughput(model, model.input_shape, block * batch, device)
                start = time.perf_counter()
                result = scanner.scan(model, data, labels=labels)
                wall = time.perf_counter() - start
                scale = L / len(result.labels)
                row = {
                    "model": name, "preset": preset, "labels_scanned": len(result.labels),
                    "wall_s": round(wall, 2), "wall_s_all_labels": round(wall * scale, 1),
                    "image_passes": result.passes, "passes_per_s": round(result.passes / result.wall_time, 1),
                    "raw_passes_per_s": round(raw, 1), "batch": block * batch,
                    "scan_vs_raw": round(result.passes / result.wall_time / raw, 3),
                    "infected": result.infected, "flagged": result.flagged,
                    "anomaly_index": result.anomaly_index,
                    "flagged_norms": {str(l): round(result.l1_norms[result.labels.index(l)], 2) for l in result.flagged},
                    "target_norm": (round(result.l1_norms[result.labels.index(TARGETS[dataset])], 2)
                                    if TARGETS[dataset] in result.labels else None),
                    "median_norm": round(result.outliers.median, 2),
                    "note": note,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = render(rows, meta)
    args.out.with_suffix(".md").write_text(table)
    print(table)


def verdict(r) -> str:
    # An outlier analysis over a few labels says nothing about the model.
    return "n/a (subset)" if r["note"] else str(r["infected"])


def render(rows, meta) -> str:
    head = ("| model | preset | labels | wall s | wall s (all labels) | passes | passes/s | raw passes/s | scan/raw "
            "| infected | flagged | anomaly idx | flagged norms | target norm | median |")
    lines = [f"Machine: {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, {meta['device']}, "
             f"{meta['date']}", "", head, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['preset']} | {r['labels_scanned']} | {r['wall_s']} | {r['wall_s_all_labels']} "
            f"| {r['image_passes']} | {r['passes_per_s']} | {r['raw_passes_per_s']} | {r['scan_vs_raw']} "
            f"| {verdict(r)} | {r['flagged']} | {r['anomaly_index']:.2f} | {r['flagged_norms']} "
            f"| {r['target_norm']} | {r['median_norm']} |")
    notes = [f"- {r['model']} / {r['preset']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


if __name__ == "__main__":
    main()
