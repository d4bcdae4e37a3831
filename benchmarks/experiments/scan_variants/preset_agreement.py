"""How closely a variant of the `fast` settings reproduces the `original` preset's per-label norms.

    python -m benchmarks.experiments.scan_variants.preset_agreement --dataset gtsrb --model clean --seeds 0 1 \
        --variant "" --variant early_stop_patience=40 --variant lr=0.05

Each `--variant` is a space-separated list of KEY=VALUE overrides of the fast preset's settings
("" is the preset itself). Every variant reverse-engineers the same labels (by default the six
with the smallest `original` norms and six others) and is compared with the norms of the full
`original` scan recorded in benchmarks/results/scan_speed.json (seed 0; benchmarks.scan_speed): mean |log(fast/original)|
is the typical relative difference per label, `bias` its signed mean (positive: larger masks than
`original`, i.e. less converged). Comparing labels, not verdicts, lets one variant be judged in
about a minute instead of a full scan; a verdict needs all labels (benchmarks.scan_speed, scan_seeds.py).
Writes benchmarks/experiments/scan_variants/results/preset_agreement_<dataset>_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from benchmarks.common import MODELS, RESULTS, benchmark_model, markdown_table, parse_overrides, run_meta
from neuralcleanse.data import load_dataset
from neuralcleanse.detection import NeuralCleanse

ROOT = Path(__file__).resolve().parent


def original_norms(dataset: str, model: str) -> dict[int, float]:
    rows = json.loads((RESULTS / "scan_speed.json").read_text())["rows"]
    for r in rows:
        if r["model"] == f"{dataset}-{model}" and r["preset"] == "original" and r["labels_scanned"] == len(r["labels"]):
            return dict(zip(r["labels"], r["l1_norms"]))
    raise SystemExit(f"scan_speed.json has no full original scan of {dataset}-{model}; run python -m benchmarks.scan_speed first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["mnist", "gtsrb"], default="gtsrb")
    ap.add_argument("--model", choices=["clean", "badnets"], default="clean")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variant", action="append", default=None, metavar="'KEY=VALUE ...'")
    ap.add_argument("--labels", type=int, nargs="+", default=None)
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--models-dir", type=Path, default=MODELS)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    orig = original_norms(args.dataset, args.model)
    smallest = sorted(orig, key=orig.get)[:6]
    labels = args.labels or smallest + [l for l in sorted(orig)[::5] if l not in smallest][:6]
    data = load_dataset(args.dataset).test
    model, path = benchmark_model(args.dataset, args.model == "badnets", args.models_dir, args.device)
    out = ROOT / "results" / f"preset_agreement_{args.dataset}_{args.model}"
    meta = {**run_meta("experiments.scan_variants.preset_agreement", args.device),
            "labels": labels, "original_norms": {str(l): round(orig[l], 2) for l in labels}}
    rows = []
    for spec in args.variant or [""]:
        overrides = parse_overrides(spec.split())
        for seed in args.seeds:
            result = NeuralCleanse("fast", seed=seed, device=args.device, block_size=args.block_size,
                                   progress=False, **overrides).scan(model, data, labels=labels)
            norms = dict(zip(result.labels, result.l1_norms))
            err = [math.log(norms[l] / orig[l]) for l in labels]
            row = {"variant": spec or "(fast)", "seed": seed, "wall_s": round(result.wall_time, 1),
                   "passes": result.passes,
                   "mean_abs_log": round(sum(map(abs, err)) / len(err), 3), "bias": round(sum(err) / len(err), 3),
                   "mean_steps": round(sum(result.steps) / len(result.steps)),
                   "norms": {str(l): round(norms[l], 1) for l in labels}, "date": time.strftime("%Y-%m-%d %H:%M")}
            print(json.dumps(row), flush=True)
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
            out.with_suffix(".md").write_text(
                f"{args.dataset} {args.model} ({path.name}); {meta['machine']}, torch {meta['torch']}, "
                f"{meta['threads']} threads, {args.device}\n\n`{meta['command']}`\n\n"
                f"original (seed 0, full scan): {meta['original_norms']}\n\n"
                + markdown_table(rows, ["variant", "seed", "wall_s", "passes", "mean_abs_log", "bias",
                                        "mean_steps", "norms", "date"]))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
