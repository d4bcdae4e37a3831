"""Whether the neuron-noise test should vote: the same scans judged with it counting and with Neural Cleanse alone
counting, on a population file (docs/experiments/2026-12-08-second-opinion-check.md).

    python -m benchmarks.experiments.second_opinion.vote_check benchmarks/results/population_mnist_fresh300.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from neuralcleanse.detection.combined import CombineRule, combine
from neuralcleanse.detection.evidence import Evidence

RULES = {"nc+noise (0.10.0)": CombineRule(count=("nc", "noise")), "nc alone": CombineRule(count=("nc",))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("population", type=Path, nargs="+")
    ap.add_argument("--split", choices=("all", "tune", "test"), default="all")
    args = ap.parse_args()
    rows = [json.loads(line) for path in args.population for line in path.open()]
    rows = [r for r in rows if r.get("kept") and r.get("scan") and args.split in ("all", r["split"])]
    print(f"{len(rows)} models ({sum(r['true_target'] is not None for r in rows)} infected)")
    print("| rule | architecture | targets flagged | false alarms | targets − false alarms |")
    print("|---|---|---|---|---|")
    for name, rule in RULES.items():
        for arch in ("all", "bn_gap", "paper", "mlp"):
            sel = [r for r in rows if arch in ("all", r["recipe"]["arch"])]
            hits = alarms = infected = clean = 0
            for r in sel:
                evidence = {k: Evidence.from_dict(e) for k, e in r["scan"]["detectors"].items()}
                flagged = combine(evidence, rule, nc_flagged=evidence["nc"].details.get("flagged", [])).flagged
                if r["true_target"] is None:
                    clean += 1
                    alarms += bool(flagged)
                else:
                    infected += 1
                    hits += r["true_target"] in flagged
            print(f"| {name} | {arch} | {hits}/{infected} | {alarms}/{clean} | {hits - alarms} |")


if __name__ == "__main__":
    main()
