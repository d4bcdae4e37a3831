"""The Trojan attack on population models (benchmarks.population), then the default scan of each.

    python -m benchmarks.trojan_population --dataset gtsrb --models gtsrb-clean-002 --target 33

For each clean model named (made by population.py's recipes, i.e. by code other than ours; rebuilt
there when missing), `TrojanAttack()` with its defaults trojans it for `--target`, and
`NeuralCleanse("fast", seed=0)` scans the result on the test split. One JSON line per model goes to
benchmarks/results/trojan_population_<dataset>.jsonl: clean accuracy before and after, attack success,
the verdict, flagged labels, anomaly index, and the reversed target mask's overlap with the real mask.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import mask_overlap, run_meta
from benchmarks.mitigation_population import model_of

from neuralcleanse import load_dataset
from neuralcleanse.attacks import TrojanAttack
from neuralcleanse.detection import NeuralCleanse

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gtsrb")
    ap.add_argument("--models", nargs="+", required=True, help="population ids of clean models")
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    out = ROOT / "results" / f"trojan_population_{args.dataset}.jsonl"
    for mid in args.models:
        model, _ = model_of({"id": mid}, args.dataset)
        start = time.perf_counter()
        attack = TrojanAttack().attack(model, data, args.target)
        attack_s = time.perf_counter() - start
        scan = NeuralCleanse("fast", seed=0, progress=False).scan(attack.model, data.test)
        i = scan.labels.index(args.target)
        row = {"model": mid, "target": args.target, "clean_before": attack.clean_accuracy_before,
               "clean_after": attack.clean_accuracy_after, "attack_success": attack.attack_success,
               "layer": attack.layer, "neurons": attack.neurons, "attack_seconds": round(attack_s, 1),
               "verdict": scan.verdict, "flagged": scan.flagged, "anomaly_index": scan.anomaly_index,
               "target_l1": scan.l1_norms[i], "real_mask_l1": float(attack.trigger.mask.sum()),
               "median_l1": float(torch.tensor(scan.l1_norms).median()),
               "mask_on_trigger": round(mask_overlap(scan.masks[i], attack.trigger.mask), 3),
               "scan_seconds": round(scan.wall_time, 1), **run_meta("trojan_population.py", "cpu")}
        with out.open("a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        print(json.dumps({k: row[k] for k in ("model", "clean_before", "clean_after", "attack_success", "verdict",
                                               "flagged", "anomaly_index", "target_l1", "median_l1",
                                               "mask_on_trigger")}), flush=True)


if __name__ == "__main__":
    main()
