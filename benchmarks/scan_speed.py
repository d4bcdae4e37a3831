"""Scan speed and quality, per model and preset, in one process and one table.

    python -m benchmarks.scan_speed                # all four models, both presets
    python -m benchmarks.scan_speed --datasets mnist --presets fast
    python -m benchmarks.scan_speed --original-subset 0   # `original` on every label

Writes benchmarks/results/scan_speed.json and .md, rewritten after each row so that an
interrupted run keeps what it measured. Where the `original` preset would run for hours (GTSRB
on a CPU), it can run on a subset of labels (the known target plus others) and its wall time is
extrapolated to all labels by labels scanned; the table says so. Each row keeps every label's
norm, so that `fast` and `original` can be compared label by label.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.common import TARGETS, benchmark_model, target_overlap
from neuralcleanse.data import load_dataset
from neuralcleanse.detection import NeuralCleanse, get_preset
from neuralcleanse.detection.hardware import choose_block_size

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
                    help="labels for `original` on datasets listed in --subset-datasets (0: all)")
    ap.add_argument("--subset-datasets", nargs="*", default=["gtsrb"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "scan_speed")
    ap.add_argument("--update", action="store_true",
                    help="keep the rows of other datasets already in --out (each dataset's rows still come "
                         "from one run, so its ratios are measured in one process)")
    args = ap.parse_args()
    device = torch.device(args.device)
    kept: list[dict] = []
    if args.update and args.out.with_suffix(".json").exists():
        old = json.loads(args.out.with_suffix(".json").read_text())
        kept = [r for r in old["rows"] if r["model"].split("-")[0] not in args.datasets]
        for r in kept:  # rows from before rows carried their own run's machine and date
            r.setdefault("run", f"{old['meta']['machine']}, {old['meta']['date']}")
    rows: list[dict] = []
    meta = {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    for dataset in args.datasets:
        data = load_dataset(dataset).test
        for infected in (True, False):
            model, path = benchmark_model(dataset, infected, args.models_dir, str(device))
            name = f"{dataset}-{'badnets' if infected else 'clean'}"
            for preset in args.presets:
                labels = None
                note = ""
                L = model.num_classes
                if preset == "original" and dataset in args.subset_datasets and args.original_subset > 0:
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
                    "target_on_true_trigger": target_overlap(model, result),
                    "median_norm": round(result.outliers.median, 2),
                    "labels": result.labels, "l1_norms": [round(v, 3) for v in result.l1_norms],
                    "model_file": path.name, "date": time.strftime("%Y-%m-%d %H:%M"), "note": note,
                    "run": f"{meta['machine']}, {meta['date']}",
                }
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("labels", "l1_norms")}), flush=True)
                write(args.out, kept + rows, meta, complete=False)
    print(write(args.out, kept + rows, meta, complete=True))


def write(out: Path, rows: list[dict], meta: dict, complete: bool) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "complete": complete, "rows": rows}, indent=2))
    table = render(rows, meta) + ("" if complete else "\n(run not finished)\n")
    out.with_suffix(".md").write_text(table)
    return table


def verdict(r) -> str:
    # An outlier analysis over a few labels says nothing about the model.
    return "n/a (subset)" if r["note"] else str(r["infected"])


def render(rows, meta) -> str:
    head = ("| model | preset | labels | wall s | wall s (all labels) | passes | passes/s | raw passes/s | scan/raw "
            "| infected | flagged | anomaly idx | flagged norms | target norm | target mask on trigger | median |")
    lines = [f"Machine: {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, {meta['device']}, "
             f"{meta['date']}"]
    runs: dict[str, list[str]] = {}
    for r in rows:
        runs.setdefault(r.get("run", "this run"), []).append(f"{r['model']} {r['preset']}")
    if len(runs) > 1:  # --update keeps other datasets' rows from an earlier run: say which came from where
        lines += ["", "Rows from more than one run (each dataset's rows from one process):"]
        lines += [f"- {run}: {', '.join(names)}" for run, names in runs.items()]
    lines += ["", head, "|" + "---|" * 16]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['preset']} | {r['labels_scanned']} | {r['wall_s']} | {r['wall_s_all_labels']} "
            f"| {r['image_passes']} | {r['passes_per_s']} | {r['raw_passes_per_s']} | {r['scan_vs_raw']} "
            f"| {verdict(r)} | {r['flagged']} | {r['anomaly_index']:.2f} | {r['flagged_norms']} "
            f"| {r['target_norm']} | {r.get('target_on_true_trigger')} | {r['median_norm']} |")
    notes = [f"- {r['model']} / {r['preset']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(lines + ([""] + notes if notes else []) + compare(rows)) + "\n"


def compare(rows: list[dict]) -> list[str]:
    """`fast` against `original` per model: the agreement checks and the speed-up."""
    out = []
    for fast in (r for r in rows if r["preset"] == "fast"):
        orig = next((r for r in rows if r["model"] == fast["model"] and r["preset"] == "original"), None)
        if orig is None:
            continue
        line = f"- {fast['model']}: fast {orig['wall_s_all_labels'] / fast['wall_s']:.1f}× less wall time"
        if not orig["note"]:
            same = orig["infected"] == fast["infected"] and orig["flagged"] == fast["flagged"]
            gaps = [abs(fast["flagged_norms"][k] - v) / v for k, v in orig["flagged_norms"].items()
                    if k in fast["flagged_norms"]]
            line += (f"; same verdict and flagged labels: {'yes' if same else 'NO'}"
                     + (f"; flagged norms at most {100 * max(gaps):.0f}% apart" if gaps else ""))
        elif fast["target_norm"] and orig["target_norm"]:
            gap = abs(fast["target_norm"] - orig["target_norm"]) / orig["target_norm"]
            line += f"; target norms {100 * gap:.0f}% apart (original on a subset: no verdict)"
        out.append(line)
    return ([""] + out) if out else []


if __name__ == "__main__":
    main()
