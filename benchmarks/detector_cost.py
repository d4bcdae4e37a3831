"""What the second opinions cost: a default scan (Neural Cleanse, neuron noise, MM-BD) against Neural Cleanse
alone (`--detectors nc`, the `fast` preset), on population models of each architecture, in one process.

    python -m benchmarks.detector_cost                       # MNIST and GTSRB, a few models of each architecture
    python -m benchmarks.detector_cost --datasets mnist --per-arch 1

For each model both scans run back to back (Neural Cleanse alone first), so each ratio is measured on one model
in one process. The models are the population's cached ones (build them first: benchmarks.population), tune split first.
Writes benchmarks/results/detector_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.mitigation_population import model_of
from neuralcleanse.data import load_dataset
from neuralcleanse.detection import NeuralCleanse

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist", "gtsrb"])
    ap.add_argument("--per-arch", type=int, default=2, help="models of each architecture, kind and dataset")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "detector_cost")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = {"machine": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    rows = []
    for dataset in args.datasets:
        data = load_dataset(dataset).test
        chosen: dict[tuple[str, bool], int] = {}
        # Whatever population models are cached (a model's own file holds its recipe), tune split first.
        paths = sorted((ROOT / "models" / "population" / dataset).glob("*.pt"),
                       key=lambda p: (int(p.stem.rsplit("-", 1)[1]) % 2, p.stem))
        for path in paths:
            model, recipe = model_of({"id": path.stem}, dataset)
            key = (recipe["arch"], recipe["attack"] is None)
            if chosen.get(key, 0) >= args.per_arch:
                continue
            chosen[key] = chosen.get(key, 0) + 1
            timings = {}
            for name, detectors in (("nc", ("nc",)), ("default", None)):
                scanner = NeuralCleanse("fast", progress=False) if detectors is None else \
                    NeuralCleanse("fast", progress=False, detectors=detectors)
                start = time.perf_counter()
                result = scanner.scan(model, data)
                timings[name] = (time.perf_counter() - start, result)
            default = timings["default"][1]
            tests = {name: round(e.wall_time, 2) for name, e in default.evidence.items() if name != "nc"}
            row = {"dataset": dataset, "model": path.stem, "arch": recipe["arch"],
                   "nc_s": round(timings["nc"][0], 2), "default_s": round(timings["default"][0], 2),
                   "ratio": round(timings["default"][0] / timings["nc"][0], 3), "tests_s": tests,
                   "ran": [n for n, e in default.evidence.items() if e.ran], "verdict": default.verdict}
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args.out, rows, meta)
    print(write(args.out, rows, meta))


def write(out: Path, rows: list[dict], meta: dict) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Machine: {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), {meta['date']}.", "",
             "| dataset | model | architecture | Neural Cleanse alone s | default scan s | ratio | noise s | MM-BD s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['arch']} | {r['nc_s']} | {r['default_s']} | "
                     f"{r['ratio']:.2f} | {r['tests_s'].get('noise', '–') if 'noise' in r['ran'] else 'not run'} | "
                     f"{r['tests_s'].get('mmbd', '–')} |")
    for dataset in sorted({r["dataset"] for r in rows}):
        sel = [r for r in rows if r["dataset"] == dataset]
        total = sum(r["default_s"] for r in sel) / sum(r["nc_s"] for r in sel)
        lines.append(f"\n{dataset}: all models together {total:.2f}× Neural Cleanse alone; median ratio "
                     f"{statistics.median(r['ratio'] for r in sel):.2f}, largest {max(r['ratio'] for r in sel):.2f}.")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    main()
