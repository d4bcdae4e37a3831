"""How much a scan's verdict depends on its seed (the clean samples drawn, the start, the batches).

    python -m benchmarks.experiments.scan_variants.scan_seeds --dataset gtsrb --model clean --preset fast --seeds 0 1 2 3 4
    python -m benchmarks.experiments.scan_variants.scan_seeds --dataset gtsrb --model clean --preset original --seeds 1 \
        --labels 1 12 25 34 38 39

`--labels` scans only those labels (the original preset on all 43 GTSRB labels runs for about an hour
here): their norms can be compared across seeds, but an outlier analysis over a few labels says
nothing about the model, so such rows carry no verdict. `--name` keeps such runs in files of their
own and `--block-size` pins the labels per pass; merge_subsets.py (beside this file) joins runs that together
cover every label at one seed into one verdict.

A model whose smallest norms sit near the anomaly-index threshold of 2 can be flagged by one seed and
not by the next; this measures that spread, under either preset, so that a difference between
`fast` and `original` can be set against each preset's own run-to-run variation.
Writes benchmarks/experiments/scan_variants/results/scan_seeds_<dataset>_<model>_<preset>.json and .md, rewritten after each
seed; `--update` keeps the seeds already there that this run does not redo.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import MODELS, TARGETS, benchmark_model, markdown_table, parse_overrides, run_meta, target_overlap
from neuralcleanse.data import load_dataset
from neuralcleanse.detection import NeuralCleanse

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(TARGETS), default="gtsrb")
    ap.add_argument("--model", choices=["clean", "badnets"], default="clean")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--labels", type=int, nargs="+", default=None, help="a subset of labels (no verdict)")
    ap.add_argument("--loss", choices=["cross_entropy", "original"], default="cross_entropy",
                    help="'original': the published code's swapped cross-entropy")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override the preset's settings, e.g. --set samples_per_step=64 max_steps=192")
    ap.add_argument("--block-size", type=int, default=None, help="labels per pass (default: timed)")
    ap.add_argument("--name", default="", help="appended to the output file's name")
    ap.add_argument("--models-dir", type=Path, default=MODELS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--update", action="store_true")
    args = ap.parse_args()
    overrides = parse_overrides(args.set)
    out = ROOT / "results" / (f"scan_seeds_{args.dataset}_{args.model}_{args.preset}"
                              f"{'_subset' if args.labels else ''}{'_loss-original' if args.loss == 'original' else ''}"
                              + "".join(f"_{k}-{v}" for k, v in overrides.items())
                              + (f"_{args.name}" if args.name else ""))
    rows: list[dict] = []
    if args.update and out.with_suffix(".json").exists():
        rows = [r for r in json.loads(out.with_suffix(".json").read_text())["rows"] if r["seed"] not in args.seeds]
    meta = run_meta("experiments.scan_variants.scan_seeds", args.device)
    data = load_dataset(args.dataset).test
    model, path = benchmark_model(args.dataset, args.model == "badnets", args.models_dir, args.device)
    subset = args.labels is not None
    for seed in args.seeds:
        scanner = NeuralCleanse(args.preset, seed=seed, device=args.device, progress=False, loss=args.loss,
                                block_size=args.block_size, **overrides)
        result = scanner.scan(model, data, labels=args.labels)
        order = sorted(range(len(result.labels)), key=lambda i: result.l1_norms[i])
        row = {
            "seed": seed, "wall_s": round(result.wall_time, 1),
            # an outlier analysis over a handful of labels says nothing about the model
            "infected": "n/a (subset)" if subset else result.infected,
            "flagged": "n/a" if subset else result.flagged,
            "anomaly_index": None if subset else round(result.anomaly_index, 2),
            "median_norm": None if subset else round(result.outliers.median, 2),
            "smallest_norms": {str(result.labels[i]): round(result.l1_norms[i], 2)
                               for i in order[: None if subset else 5]},
            "target_on_true_trigger": target_overlap(model, result),
            "block_size": result.settings["block_size"], "labels": result.labels,
            "l1_norms": [round(v, 3) for v in result.l1_norms],
            "model_file": path.name, "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        print(json.dumps({k: v for k, v in row.items() if k not in ("labels", "l1_norms")}), flush=True)
        rows = sorted(rows + [row], key=lambda r: r["seed"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        cols = ["seed", "wall_s", "infected", "flagged", "anomaly_index", "median_norm", "smallest_norms",
                "target_on_true_trigger", "block_size", "date"]
        out.with_suffix(".md").write_text(
            f"{args.dataset} {args.model} ({path.name}), preset {args.preset}, loss {args.loss}{''.join(f', {k}={v}' for k, v in overrides.items())}; {meta['machine']}, "
            f"torch {meta['torch']}, {meta['threads']} threads, {args.device}\n\n" + markdown_table(rows, cols))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
