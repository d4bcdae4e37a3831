"""Mitigation on the benchmark models: input filter, pruning and unlearning on the BadNets models, in one table.

    python -m benchmarks.mitigation_results [--datasets mnist gtsrb]

Per model: a `fast` scan, then each method with its defaults exactly as `neuralcleanse mitigate`
runs it (the reversed trigger of the flagged label; the real trigger, carried by the checkpoint,
only to measure). Unlearning also runs its two baselines (fine-tuning with no trigger, and with
the real trigger). Writes benchmarks/results/mitigation.json and .md, and the charts beside them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import TARGETS, benchmark_model, markdown_table
from neuralcleanse.data import load_dataset
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.mitigation import known_backdoors, make_method, mitigate
from neuralcleanse.mitigation.unlearning import training_lr
from neuralcleanse.report.mitigation_report import CHARTS
from neuralcleanse.training import DEFAULTS

ROOT = Path(__file__).resolve().parent


def pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mnist", "gtsrb"])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "mitigation")
    ap.add_argument("--methods", nargs="+", default=["filter", "prune", "unlearn"],
                    help="Run only these; rows of the others are kept from the previous results file.")
    args = ap.parse_args()
    rows, raw = [], {}
    previous = args.out.with_suffix(".json")
    if set(args.methods) != {"filter", "prune", "unlearn"} and previous.exists():
        old = json.loads(previous.read_text())
        rows = [r for r in old["rows"] if r["method"] not in args.methods]
        raw = {k: v for k, v in old["runs"].items() if k.split("/")[1] not in args.methods}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        data = load_dataset(dataset)
        model, path = benchmark_model(dataset, True, args.models_dir, args.device)
        start = time.perf_counter()
        scan = NeuralCleanse("fast", device=args.device, progress=False).scan(model, data.test)
        print(f"{path.stem}: scan flagged {scan.flagged} in {time.perf_counter() - start:.0f}s", flush=True)
        if TARGETS[dataset] not in scan.flagged:
            print("  the target was not flagged; mitigating it anyway, by name")
        real = known_backdoors(model.info.metadata)
        for method in args.methods:
            # The benchmark models predate checkpoints recording their training rate; they were trained
            # with DEFAULTS, which is what unlearning's default would read from a newer checkpoint.
            params = {"lr": training_lr(model) or DEFAULTS[dataset]["lr"]} if method == "unlearn" else {}
            out = mitigate(model, scan, data, make_method(method, params, device=args.device),
                           labels=[TARGETS[dataset]], real=real, baselines=True)
            raw[f"{path.stem}/{method}"] = out.to_dict()
            CHARTS[method](out, args.out.parent / f"mitigation_{dataset}_{method}.png")
            row = {"model": path.stem, "method": method, "clean_acc_before": pct(out.before.clean_accuracy),
                   "asr_before": pct(out.before.worst_attack_success),
                   "clean_acc_after": pct(out.after.clean_accuracy), "asr_after": pct(out.after.worst_attack_success),
                   "reversed_asr_after": pct(out.reversed_after.worst_attack_success),
                   "s": round(out.wall_time, 1)}
            if method == "filter":
                rates = out.filter_rates
                row["detail"] = (f"FPR {pct(rates.false_positive_rate)}, FNR {pct(rates.false_negative_rate)} "
                                 f"(reversed trigger: {pct(out.details['filter']['reversed_false_negative_rate'])})")
            elif method == "prune":
                below = out.pruning.first_below(0.05)
                row["detail"] = (f"kept {out.pruning.fraction:.0%} pruned; real ASR < 5% at "
                                 + (f"{below.fraction:.0%} (clean acc {pct(below.clean_accuracy)})" if below
                                    else "never"))
            else:
                row["detail"] = "; ".join(f"{k}: acc {pct(m.clean_accuracy)}, ASR {pct(m.worst_attack_success)}"
                                          for k, m in out.baselines.items())
            rows.append(row)
            print(json.dumps(row), flush=True)
    order = {(m, d): i for i, (d, m) in enumerate((d, m) for d in ("mnist", "gtsrb")
                                                    for m in ("filter", "prune", "unlearn"))}
    rows.sort(key=lambda r: order.get((r["method"], r["model"].split("_")[0]), 99))
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "runs": raw}, indent=2))
    cols = ["model", "method", "clean_acc_before", "clean_acc_after", "asr_before", "asr_after",
            "reversed_asr_after", "detail", "s"]
    table = markdown_table(rows, cols)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
