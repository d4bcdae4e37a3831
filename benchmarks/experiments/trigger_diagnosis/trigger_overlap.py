"""Where does the reversed trigger lie against the real one? A diagnosis of unlearning's failures.

    python -m benchmarks.experiments.trigger_diagnosis.trigger_overlap --dataset mnist
    python -m benchmarks.experiments.trigger_diagnosis.trigger_overlap --dataset mnist --report

For every kept infected model of the population, the model is scanned as benchmarks.mitigation_population scans
it (`fast`, seed 0, on the same N = 1,000 clean test images; no restarts, so the seed-0 trigger) and the share of the true
target's reversed mask that lies on the real trigger's pixels is recorded
(benchmarks/experiments/trigger_diagnosis/results/trigger_overlap_<dataset>.jsonl, one line a model, written as it goes). The report
joins it with the unlearning records (default recipe, N = 1,000;
benchmarks/results/unlearning_population_<dataset>_default.jsonl) and counts, per architecture, the models
whose reversed trigger lies mostly away from the real one and how many of them unlearning failed
(real attack above 5% after).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS
from benchmarks.mitigation_population import model_of, population
from benchmarks.population_recipes import trigger_of

from neuralcleanse import NeuralCleanse, load_dataset

ROOT = Path(__file__).resolve().parent
SIZE = 1000
AWAY = 0.25  # "mostly away": under a quarter of the reversed mask's mass on the real trigger's pixels
DEFAULT_RECIPE = "sized+rounds3+min3+tol0.02+kd1"  # the unlearning default since 0.6, as recorded


def scan_all(dataset: str, out: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    done = {json.loads(l)["id"] for l in out.open()} if out.exists() else set()
    test = load_dataset(dataset).test
    user = test.random_sample(SIZE, seed=1000 + SIZE)  # benchmarks.mitigation_population's draw for this N
    for row in population(dataset, "all"):
        if row["id"] in done:
            continue
        model, recipe = model_of(row, dataset)
        start = time.perf_counter()
        scan = NeuralCleanse("fast", progress=False, seed=0, restarts=0).scan(model, user)
        target = recipe["attack"]["target"]
        found = scan.trigger(target).mask
        real = trigger_of(recipe).mask > 0
        line = {"id": row["id"], "split": row["split"], "arch": recipe["arch"], "pattern": recipe["attack"]["pattern"],
                "side": recipe["attack"]["side"], "target": target, "target_l1": float(found.sum()),
                "on_real_share": float(found[real].sum() / found.sum().clamp_min(1e-12)),
                "target_smallest": scan.labels[min(range(len(scan.labels)), key=scan.l1_norms.__getitem__)] == target,
                "seconds": round(time.perf_counter() - start, 1)}
        with out.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(f"{row['id']}: {line['on_real_share']:.0%} of the target's mask on the real trigger "
              f"({line['seconds']} s)", flush=True)


def report(out: Path, unlearning: Path, recipe: str) -> str:
    lines = [json.loads(l) for l in out.open()] if out.exists() else []
    after = {}
    if unlearning.exists():
        for l in map(json.loads, unlearning.open()):
            if l["recipe"] == recipe and l["size"] == SIZE and l.get("method", "unlearn") == "unlearn":
                after[l["id"]] = l["real_after"]
    table = [f"Reversed target trigger against the real one; unlearning: `{recipe}`, N = {SIZE} "
             f"({unlearning.name}). Away: under {AWAY:.0%} of the mask's mass on the real trigger's pixels.", "",
             "| architecture | models | reversed trigger away from the real one | of those, unlearning failed | "
             "on the real one | of those, unlearning failed | failed (real > 5% after) |", "|---|---|---|---|---|---|---|"]
    for arch in sorted({l["arch"] for l in lines}):
        rows = [l for l in lines if l["arch"] == arch and l["id"] in after]
        away = [l for l in rows if l["on_real_share"] < AWAY]
        near = [l for l in rows if l["on_real_share"] >= AWAY]

        def failed(group: list[dict]) -> list[str]:
            return [f"{l['id'].rsplit('-', 1)[-1]} ({after[l['id']]:.0%})" for l in group if after[l["id"]] > 0.05]

        table.append(f"| {arch} | {len(rows)} | {len(away)} | {len(failed(away))} | {len(near)} | {len(failed(near))} | "
                     f"{', '.join(failed(rows)) or '–'} |")
    return "\n".join(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("mnist", "gtsrb"), default="mnist")
    ap.add_argument("--report", action="store_true", help="report only, scan nothing")
    ap.add_argument("--unlearning", default=None, help="the unlearning records to join (default: the default recipe's, 0.6)")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = ROOT / "results" / f"trigger_overlap_{args.dataset}.jsonl"
    unlearning = Path(args.unlearning) if args.unlearning else (
        RESULTS / f"unlearning_population_{args.dataset}_default.jsonl")
    if not args.report:
        scan_all(args.dataset, out, args.threads)
    text = report(out, unlearning, args.recipe)
    print(text)
    (ROOT / "results" / f"trigger_overlap_{args.dataset}.md").write_text(
        f"# Reversed and real triggers on the {args.dataset} population\n\n`python -m benchmarks.experiments.trigger_diagnosis.trigger_overlap`\n\n"
        + text + "\n")


if __name__ == "__main__":
    main()
