"""Does the reversed trigger of the true target stay put across scan seeds? A gate candidate for unlearning.

    python -m benchmarks.experiments.trigger_diagnosis.trigger_stability --dataset mnist
    python -m benchmarks.experiments.trigger_diagnosis.trigger_stability --dataset mnist --population \
        benchmarks/results/population_mnist_fresh200.jsonl
    python -m benchmarks.experiments.trigger_diagnosis.trigger_stability --report

For every kept infected model, the true target is reverse-engineered as benchmarks.mitigation_population's scan does
(`fast`, no restarts, on the same N = 1,000 clean test images) with seeds 0-4. The five masks are compared
pairwise: `inter` is the mean histogram intersection of the masks normalised to sum 1 (1: the same mask
everywhere; 0: disjoint), `cos` their mean cosine similarity. One JSON line a model goes to
benchmarks/experiments/trigger_diagnosis/results/trigger_stability_<dataset>.jsonl as it finishes. The report joins
them with the records of what the default unlearning (the plain rounds) left of the real attack and gives the AUROC of
"low stability" for "the real attack survived (> 5%)". The idea: where seeds disagree, the reversed trigger is
one of many routes to the label and may not be the attacker's. `benchmarks.common.seed_triggers` is also what
`benchmarks.mitigation_population --extra-seeds` treats beside the scan's trigger.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import BENCHMARKS, RESULTS, seed_triggers
from benchmarks.mitigation_population import model_of, population

from neuralcleanse import load_dataset

ROOT = Path(__file__).resolve().parent
SIZE = 1000
SEEDS = 5
FAILED = 0.05  # the repair goal's line: real attack success left above this is a failed repair
# What the default unlearning (its plain rounds, 0.8) left: the MNIST tune and test splits, and the fresh draw.
OUTCOMES = (BENCHMARKS / "experiments" / "unlearning_variants" / "results" / "unlearning_population_mnist_gate.jsonl",
            RESULTS / "unlearning_population_mnist_fresh200.jsonl")


def agreement(masks: list[torch.Tensor]) -> dict[str, float]:
    flat = torch.stack([m.flatten().float() for m in masks])
    shares = flat / flat.sum(1, keepdim=True).clamp_min(1e-12)
    pairs = [(a, b) for a in range(len(flat)) for b in range(a + 1, len(flat))]
    inter = [float(torch.minimum(shares[a], shares[b]).sum()) for a, b in pairs]
    cos = [float(torch.nn.functional.cosine_similarity(flat[a], flat[b], dim=0)) for a, b in pairs]
    return {"inter": sum(inter) / len(inter), "inter_min": min(inter), "cos": sum(cos) / len(cos)}


def measure_all(dataset: str, population_file: Path | None, out: Path) -> None:
    done = {json.loads(l)["id"] for l in out.open()} if out.exists() else set()
    test = load_dataset(dataset).test
    user = test.random_sample(SIZE, seed=1000 + SIZE)  # benchmarks.mitigation_population's draw for this N
    for row in population(dataset, "all", population_file):
        if row["id"] in done:
            continue
        model, recipe = model_of(row, dataset)
        start = time.perf_counter()
        found = seed_triggers(model, user, recipe["attack"]["target"], range(SEEDS), test.num_classes)
        line = {"id": row["id"], "split": row["split"], "arch": recipe["arch"],
                "l1": [round(float(t.mask.sum()), 2) for t in found], **agreement([t.mask for t in found]),
                "seconds": round(time.perf_counter() - start, 1)}
        with out.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(f"{row['id']} {line['arch']}: inter {line['inter']:.2f}, cos {line['cos']:.2f} ({line['seconds']} s)",
              flush=True)


def report(out: Path) -> str:
    stability = {l["id"]: l for l in map(json.loads, out.open())} if out.exists() else {}
    left = {}
    for path in OUTCOMES:
        if path.exists():
            left.update({r["id"]: r["plain_real_after"] for r in map(json.loads, path.open()) if "plain_real_after" in r})
    rows = [(stability[i]["inter"], left[i] > FAILED, stability[i]["arch"]) for i in stability if i in left]
    lines = [f"Seed agreement of the target's reversed trigger ({SEEDS} seeds) against what the default unlearning "
             f"left of the real attack ({', '.join(p.name for p in OUTCOMES)}).", "",
             "| architecture | models | survived (> 5%) | agreement of those (inter) | agreement of the rest |",
             "|---|---|---|---|---|"]
    for arch in sorted({a for _, _, a in rows}) + ["all"]:
        group = [r for r in rows if arch in ("all", r[2])]
        bad = sorted(round(v, 2) for v, f, _ in group if f)
        good = sorted(round(v, 2) for v, f, _ in group if not f)
        lines.append(f"| {arch} | {len(group)} | {len(bad)} | {bad or '–'} | "
                     f"{good[0] if good else '–'}–{good[-1] if good else '–'} (median {good[len(good) // 2] if good else '–'}) |")
    bad = [v for v, f, _ in rows if f]
    good = [v for v, f, _ in rows if not f]
    if bad and good:
        auroc = sum((b < g) + 0.5 * (b == g) for b in bad for g in good) / (len(bad) * len(good))
        lines += ["", f"AUROC of low agreement for a surviving backdoor: {auroc:.2f} ({len(bad)} survived, {len(good)} not)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("mnist", "gtsrb"), default="mnist")
    ap.add_argument("--population", type=Path, default=None, help="another population file (a fresh draw)")
    ap.add_argument("--report", action="store_true", help="report only, scan nothing")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = ROOT / "results" / f"trigger_stability_{args.dataset}.jsonl"
    if not args.report:
        measure_all(args.dataset, args.population, out)
    text = report(out)
    print(text)
    (ROOT / "results" / f"trigger_stability_{args.dataset}.md").write_text(
        f"# Seed agreement of reversed triggers, {args.dataset}\n\n`python -m benchmarks.experiments.trigger_diagnosis.trigger_stability`\n\n{text}\n")


if __name__ == "__main__":
    main()
