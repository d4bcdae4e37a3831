"""A verdict from `scan_seeds.py --labels` runs that together cover every label at one seed.

    python -m benchmarks.experiments.scan_variants.merge_subsets --seed 1 \
        benchmarks/experiments/scan_variants/results/scan_seeds_gtsrb_clean_original_subset.json \
        benchmarks/experiments/scan_variants/results/scan_seeds_gtsrb_clean_original_subset_rest.json

A label's reversed trigger does not depend on which labels share its block (each label draws its
own batches from its own stream; checked: the six-label seed-0 run reproduced the full scan's norms
exactly), so a long `original` scan can be run in parts and its outlier analysis done on the union.
Prints the verdict and writes it next to the first file as ..._merged_seed<S>.json/.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import markdown_table
from neuralcleanse.detection.outlier import label_outliers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--num-labels", type=int, default=None, help="default: the labels found must be 0..max")
    args = ap.parse_args()
    norms: dict[int, float] = {}
    wall, sources = 0.0, []
    for path in args.files:
        rows = [r for r in json.loads(path.read_text())["rows"] if r["seed"] == args.seed]
        if not rows:
            raise SystemExit(f"{path} has no run at seed {args.seed}")
        row = rows[0]
        overlap = set(norms) & set(row["labels"])
        if overlap:
            raise SystemExit(f"labels {sorted(overlap)} appear in more than one file")
        norms.update(zip(row["labels"], row["l1_norms"]))
        wall += row["wall_s"]
        sources.append(f"{path.name} ({len(row['labels'])} labels, {row['date']})")
    n = args.num_labels or max(norms) + 1
    missing = sorted(set(range(n)) - set(norms))
    if missing:
        raise SystemExit(f"labels {missing} are in none of the files")
    labels = sorted(norms)
    result = label_outliers([norms[l] for l in labels], labels)
    order = sorted(labels, key=norms.get)
    row = {"seed": args.seed, "labels": n, "wall_s (sum of parts)": round(wall, 1), "infected": result.infected,
           "flagged": result.flagged, "anomaly_index": round(result.anomaly_index, 2),
           "flagged_indices": {str(labels[i]): round(v, 2) for i, v in enumerate(result.label_indices)
                               if labels[i] in result.flagged},
           "median_norm": round(result.median, 2), "scaled_mad": round(result.consistent_mad, 2),
           "smallest_norms": {str(l): round(norms[l], 2) for l in order[:5]}}
    out = args.files[0].with_name(args.files[0].stem + f"_merged_seed{args.seed}")
    out.with_suffix(".json").write_text(json.dumps({"sources": sources, "row": row,
                                                    "l1_norms": {str(l): norms[l] for l in labels}}, indent=2))
    out.with_suffix(".md").write_text("Merged from: " + "; ".join(sources) + "\n\n" + markdown_table([row], list(row)))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
