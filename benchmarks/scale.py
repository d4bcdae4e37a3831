"""Screening a model zoo: models per minute for a shell loop of `neuralcleanse scan` (one process per
model, as a user would write it), `scan-many --workers 1` and `scan-many --workers 2`, on the same
MNIST models with the same options; the verdicts must agree.

    python -m benchmarks.scale                           # 40 models, the three ways
    python -m benchmarks.scale --models 3 --only w1 --out /tmp/scale   # a quick check

The models are the first --models kept ones of the MNIST population (benchmarks.population, in its
run order: clean 0, badnets 0, clean 1, ...; trained there when not cached), exported as TorchScript
into benchmarks/models/scale/ (git-ignored) with a manifest that gives each its --pixel-range. (A
TorchScript network's final softmax cannot be cut off, so the search uses the log of its probabilities:
verdicts here need not match population.py's, which scans the modules themselves.) Every
process runs PyTorch on one thread (OMP_NUM_THREADS=1) and the block size is fixed, so a model's
scan is the same computation whichever way it runs: the loop and --workers 1 use one core, --workers 2
two. Results: benchmarks/results/scale_zoo.{json,md} (--out).

The other half of the scale measurements, the 1,000-label scan's time and verdict under the coarse-to-fine
schedule against the full `fast` preset, is benchmarks.many_labels (it trains its own two models).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import markdown_table, run_meta
from benchmarks.population import build, keep, load_cached, plan
from benchmarks.population_recipes import SHAPES, SPACE, build_net, draw_recipe, model_id

ROOT = Path(__file__).resolve().parent

EXE = Path(sys.executable).parent / "neuralcleanse"
MODES = {"loop": "shell loop of `neuralcleanse scan`", "w1": "scan-many --workers 1", "w2": "scan-many --workers 2"}
MODELS_DIR = ROOT / "models" / "scale"
POPULATION_DIR = ROOT / "models" / "population" / "mnist"


def zoo(n: int) -> tuple[Path, list[dict[str, str]]]:
    """The first `n` kept population models as TorchScript files, and the manifest listing them."""
    rows: list[dict[str, str]] = []
    kept: dict[str, bool] = {}
    data = None
    min_acc, min_asr = SPACE["mnist"]["min_accuracy"], 0.90  # population.py's floors
    for kind, index in plan(n, n, lambda k, i: kept.get(model_id("mnist", k, i))):
        if len(rows) == n:
            break
        recipe = draw_recipe("mnist", kind, index)
        path = MODELS_DIR / f"{recipe['id']}.pt"
        entry = load_cached(POPULATION_DIR / f"{recipe['id']}.pt", recipe)
        if entry is None:
            from neuralcleanse.data import load_dataset

            print(f"training {recipe['id']} (not in {POPULATION_DIR})", flush=True)
            data = data or load_dataset("mnist")
            entry = build(recipe, data, POPULATION_DIR / f"{recipe['id']}.pt", min_asr, min_acc)
        kept[recipe["id"]] = keep(entry["clean_accuracy"], entry["attack_success"], min_acc, min_asr)["kept"]
        if not kept[recipe["id"]]:
            continue
        if not path.exists():
            net = build_net(recipe)
            net.load_state_dict(entry["state_dict"])
            traced = torch.jit.trace(net.eval(), torch.rand(2, *SHAPES["mnist"]) * recipe["pixel_scale"])
            MODELS_DIR.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            traced.save(str(tmp))
            os.replace(tmp, path)
        rows.append({"model": path.name, "pixel_range": "255" if recipe["input"] == "255" else "1",
                     "kind": kind})
    manifest = MODELS_DIR / f"manifest-{n}.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "pixel_range"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return manifest, rows


def run(cmd: list[str], ok: tuple[int, ...]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def measure(mode: str, manifest: Path, rows: list[dict[str, str]], work: Path, options: list[str]
            ) -> tuple[float, dict[str, dict[str, Any]]]:
    """Wall seconds for scanning every model `mode`'s way, and each model's verdict."""
    out = work / mode
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    if mode == "loop":
        for row in rows:
            run([str(EXE), "-q", "scan", str(MODELS_DIR / row["model"]), "--out", str(out / row["model"]),
                 "--pixel-range", row["pixel_range"], *options], ok=(0, 3, 4))
    else:
        run([str(EXE), "-q", "scan-many", str(manifest), "--out", str(out), "--workers", mode[1:], *options],
            ok=(0, 2, 3))
    wall = time.perf_counter() - start
    if mode == "loop":
        reports = {row["model"]: json.loads((out / row["model"] / "report.json").read_text()) for row in rows}
        verdicts = {m: {"verdict": r["verdict"], "flagged": r["flagged"], "anomaly_index": r["anomaly_index"]}
                    for m, r in reports.items()}
    else:
        summary = json.loads((out / "summary.json").read_text())["models"]
        verdicts = {r["model"]: {"verdict": r["verdict"], "flagged": r["flagged"], "anomaly_index": r["anomaly_index"],
                                 "error": r["error"]} for r in summary}
    return wall, verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument("--only", choices=sorted(MODES), action="append", help="run only this way (repeatable)")
    ap.add_argument("--block-size", type=int, default=4, help="fixed, so every way computes the same scan")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "scale_zoo")
    args = ap.parse_args()
    torch.set_num_threads(1)
    modes = args.only or list(MODES)
    manifest, rows = zoo(args.models)
    print(f"{len(rows)} models ({sum(r['kind'] == 'badnets' for r in rows)} BadNets-trained) listed in {manifest}",
          flush=True)
    options = ["--data", "mnist", "--block-size", str(args.block_size)]
    work = MODELS_DIR / "runs"
    results, verdicts = [], {}
    for mode in modes:
        wall, verdicts[mode] = measure(mode, manifest, rows, work, options)
        results.append({"mode": mode, "how": MODES[mode], "models": len(rows), "wall_s": round(wall, 1),
                        "models_per_min": round(60 * len(rows) / wall, 2)})
        print(json.dumps(results[-1]), flush=True)
    base = next((r["wall_s"] for r in results if r["mode"] == "loop"), None)
    for r in results:
        r["speed_up_vs_loop"] = round(base / r["wall_s"], 2) if base else None
    reference = verdicts[modes[0]]
    disagree = sorted(m for mode in modes for m in reference
                      if {k: verdicts[mode][m][k] for k in ("verdict", "flagged", "anomaly_index")} !=
                      {k: reference[m][k] for k in ("verdict", "flagged", "anomaly_index")})
    infected = sum(v["verdict"] == "infected" for v in reference.values())
    errors = sorted(m for mode in modes for m, v in verdicts[mode].items() if v.get("error"))
    meta = run_meta("scale.py", "cpu") | {"date": time.strftime("%Y-%m-%d %H:%M"), "omp_num_threads": 1,
                                          "block_size": args.block_size, "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "results": results, "verdicts_agree": not disagree, "disagreeing_models": disagree,
         "errors": errors, "verdicts": verdicts}, indent=2))
    table = markdown_table(results, ["how", "models", "wall_s", "models_per_min", "speed_up_vs_loop"])
    text = (f"Zoo of {len(rows)} MNIST population models ({sum(r['kind'] == 'badnets' for r in rows)} BadNets-trained, "
            f"{infected} judged infected), {meta['machine']}, "
            f"{meta['cpus']} CPUs, torch {meta['torch']}, one thread per process, block size {args.block_size}, "
            f"{meta['date']}. Command: `{meta['command']}`\n\n{table}\n"
            f"Verdicts, flagged labels and anomaly indices agree across {', '.join(modes)}: "
            f"{'yes' if not disagree else 'NO: ' + ', '.join(disagree)}."
            f"{' Errors: ' + ', '.join(errors) if errors else ''}\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)
    if disagree or errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
