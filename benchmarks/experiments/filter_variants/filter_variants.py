"""Input-filter scores compared offline, judged by the real trigger, on the infected population.

For each kept infected model (benchmarks.population) this draws the user's N clean test images as
benchmarks.mitigation_population does, scans them with the same settings, and caches the activations of the
filter's layer (the input of the last dense layer) on: the tuning half, the tuning half carrying the
reversed trigger, the held-out half, and the held-out half carrying the REAL trigger
(benchmarks/models/filter_acts/<dataset>/<id>-<N>.pt, git-ignored; rebuilt when missing). Every score
variant is then a few lines of tensor code over the cache: fitted on the tuning half (ranking and
threshold at 5% false positives), measured on the held-out half. One JSON line per (model, variant)
goes to benchmarks/experiments/filter_variants/results/filter_variants_<dataset>.jsonl, and a table per split is printed.

    python -m benchmarks.experiments.filter_variants.filter_variants --dataset mnist            # tune and test splits
    python -m benchmarks.experiments.filter_variants.filter_variants --dataset mnist --summary  # table from the file
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
import torch

from benchmarks.common import MODELS, take_shard
from benchmarks.mitigation_population import model_of, population
from benchmarks.population_recipes import trigger_of

from neuralcleanse import NeuralCleanse, load_dataset
from neuralcleanse.data.dataset import DatasetSplits
from neuralcleanse.mitigation import Backdoor
from neuralcleanse.mitigation.backdoors import reversed_backdoors, triggered_inputs
from neuralcleanse.mitigation.input_filter import calibration_scores, scored_units, unit_score
from neuralcleanse.mitigation.profile import ActivationProfile, unit_activations
from neuralcleanse.mitigation.runner import split_for_mitigation
from neuralcleanse.models.layers import resolve_layer

ROOT = Path(__file__).resolve().parent
FPR = 0.05


def activations(row: dict, dataset: str, size: int, test) -> dict[str, torch.Tensor]:
    path = MODELS / "filter_acts" / dataset / f"{row['id']}-{size}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    model, recipe = model_of(row, dataset)
    user = test.random_sample(size, seed=1000 + size)  # as mitigation_population.run_one
    target = recipe["attack"]["target"]
    scan = NeuralCleanse("fast", progress=False, seed=0).scan(model, user)
    backdoors = reversed_backdoors(scan, [target])
    tune, held = split_for_mitigation(DatasetSplits(user, user), 0)
    layer = resolve_layer(model, None)
    real = [Backdoor(target, trigger_of(recipe))]
    # Every tuning image stamped (the target's own too), so that any subset can be profiled as the tool does.
    stamped = backdoors[0].trigger.apply(tune.x)
    acts = {name: unit_activations(model, x, layer) for name, x in (
        ("tune_clean", tune.x), ("tune_stamped", stamped),
        ("held_clean", held.x), ("held_real", triggered_inputs(held, real)))}
    acts["tune_other"] = tune.y != target  # images the profile stamps (triggered_inputs leaves the target out)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(acts, path)
    return acts


VARIANTS: dict[str, tuple[str, float, bool, bool]] = {
    # name: (InputFilter score, top fraction, fitted on the whole tuning half, threshold cross-fitted as 0.7's)
    "published top1% (fit 250)": ("mean", 0.01, False, False),
    "z top1% (fit 250)": ("z", 0.01, False, False),
    "z top1% (fit all)": ("z", 0.01, True, False),
    "z top5% (fit all)": ("z", 0.05, True, False),
    "z top10% (fit all)": ("z", 0.10, True, False),
    "weighted top5% (fit all)": ("weighted", 0.05, True, False),
    "weighted top10% (fit all)": ("weighted", 0.10, True, False),
    "weighted top25% (fit all)": ("weighted", 0.25, True, False),
    "weighted all (fit all)": ("weighted", 1.0, True, False),
    "lda (fit all)": ("lda", 1.0, True, False),
    "weighted top10% (fit all, cross-fitted)": ("weighted", 0.10, True, True),
    "lda (fit all, cross-fitted)": ("lda", 1.0, True, True),
}


def measure(acts: dict[str, torch.Tensor], score: str, top_fraction: float, whole: bool,
            crossfit: bool) -> dict[str, float]:
    """The tool's own scoring (scored_units, unit_score, calibration_scores) on the cached activations,
    as InputFilter.fit does; without `crossfit` the threshold is the in-sample quantile (before 0.7)."""
    keep = torch.arange(len(acts["tune_clean"]))
    if not whole:  # the runner's draw before 0.6 (seed 0): half of a small tuning split ranks and thresholds
        keep = torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))[: len(keep) // 2]
    other = acts["tune_other"][keep]
    clean, trig = acts["tune_clean"][keep], acts["tune_stamped"][keep][other]
    profile = ActivationProfile.of(None, clean, trig, torch.nonzero(other).flatten())
    chosen = scored_units(profile, score, top_fraction)
    scores = calibration_scores(profile, score, top_fraction, chosen) if crossfit else unit_score(clean, *chosen)
    threshold = float(torch.quantile(scores.double(), 1 - FPR))
    return {"fpr": float((unit_score(acts["held_clean"], *chosen) > threshold).float().mean()),
            "fnr_real": float((unit_score(acts["held_real"], *chosen) <= threshold).float().mean())}


def summarise(path: Path) -> str:
    rows = [json.loads(l) for l in path.open()] if path.exists() else []
    lines = ["| split | N | variant | models | real missed ≤ 5% at 5% FPR | mean missed | median missed | worst missed | "
             "median FPR |", "|---|---|---|---|---|---|---|---|---|"]
    sizes = sorted({r["size"] for r in rows})
    for split, size, name in [(sp, n, v) for sp in ("tune", "test") for n in sizes for v in VARIANTS]:
        sel = [r for r in rows if r["split"] == split and r["variant"] == name and r["size"] == size]
        if sel:
            fnr = [r["fnr_real"] for r in sel]
            lines.append(f"| {split} | {size} | {name} | {len(sel)} | {sum(v <= 0.05 for v in fnr)}/{len(sel)} | "
                         f"{statistics.mean(fnr):.2%} | {statistics.median(fnr):.1%} | {max(fnr):.1%} | "
                         f"{statistics.median(r['fpr'] for r in sel):.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--split", default="all", choices=("tune", "test", "all"))
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--shard", default="0/1", metavar="I/N")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summary", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = ROOT / "results" / f"filter_variants_{args.dataset}.jsonl"
    if not args.summary:
        done = {(r["id"], r["variant"], r["size"]) for r in map(json.loads, path.open())} if path.exists() else set()
        test = load_dataset(args.dataset).test
        for row in take_shard(population(args.dataset, args.split), args.shard):
            todo = [name for name in VARIANTS if (row["id"], name, args.size) not in done]
            if not todo:
                continue
            start = time.perf_counter()
            acts = activations(row, args.dataset, args.size, test)
            with path.open("a") as f:
                for name in todo:
                    line = {"id": row["id"], "split": row["split"], "arch": row["recipe"]["arch"],
                            "output": row["recipe"]["output"], "size": args.size, "variant": name,
                            **measure(acts, *VARIANTS[name])}
                    f.write(json.dumps(line) + "\n")
            print(f"{row['id']} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(summarise(path))


if __name__ == "__main__":
    main()
