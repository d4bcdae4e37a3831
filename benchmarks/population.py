"""A population of classifiers made many ways (not with the package's `train`), clean and BadNets-infected,
each scanned with the tool: the data for the verdict's miss and false-alarm rates.

    python -m benchmarks.population --dataset mnist                 # 40 clean + 40 BadNets + 14 blended kept
    python -m benchmarks.population --dataset mnist --limit 4       # smoke test: first 4 models
    python -m benchmarks.population --dataset gtsrb                 # 12 clean + 9 BadNets + 3 blended
    python -m benchmarks.population --dataset mnist --scan-only --shard 0/2 --out a.jsonl  # and 1/2 to b.jsonl
    python -m benchmarks.population --dataset mnist --build-only    # train and cache, no scans
    python -m benchmarks.population --dataset mnist --scan-only     # scan cached models only
    python -m benchmarks.population --dataset mnist --rebuild-kept badnets  # on a fresh machine

Model i of each kind ("clean", "badnets") is made from a recipe drawn from its id alone
(`population_recipes.draw_recipe`): architecture, input convention, output kind, optimiser, epochs,
batch size, training subset and, for infected models, the trigger, target and poison rate. Even
indices form the "tune" split, odd ones the "test" split. Models are cached in
benchmarks/models/population/<dataset>/<id>.pt (git-ignored) and rebuilt from their index when missing.

An infected model is kept only if its attack success on the test split is at least --min-asr (90%);
any model whose clean accuracy on the test split is under --min-accuracy (MNIST 95%, GTSRB 85%: nobody
ships a worse one) is dropped too. Indices of each kind are drawn until --clean / --infected models are
kept, half in each split (indices of a split already full are passed over); dropped models are recorded
with "kept": false and the reason.

Results go to benchmarks/results/population_<dataset>.jsonl, one JSON line per model as it finishes;
a restarted run skips the models already in the file. Models run in the order clean 0, badnets 0,
clean 1, badnets 1, ..., so a partial file holds both kinds. `population_report.py` reads the file.

Time on the project's 2-core CPU (2026-12-02, `--threads 1`): the MNIST population (120 models built,
80 kept and scanned) took 33 min; per model, training 2 s (mlp), 8 s (paper), 21 s (bn_gap) at the
median, scans 1-6 s. `--threads 2` is about 1.8x faster on an idle machine but 10-20x slower while
another process (a test suite) holds a core: thread oversubscription stalls PyTorch's CPU kernels, so
on a shared box use `--threads 1`. GTSRB training is short (2-3 epochs, no augmentation) and
GTSRB models are scanned on all 43 labels, about 2 min each. 0.10.0's default scan of the 94 kept MNIST models
took 17 min as two `--scan-only --shard` processes (2026-12-08); GTSRB's batch-norm nets and ResNets, trained 12-16
epochs since 0.10, take 7-18 min each to build.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from neuralcleanse.attacks import BadNets
from neuralcleanse.data import Preprocessing, load_dataset
from neuralcleanse.data.dataset import DatasetSplits, ImageDataset
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.metrics import attack_success_rate, clean_accuracy
from neuralcleanse.models.classifier import Classifier, ModelInfo
from benchmarks.common import in_shard, take_shard
from benchmarks.population_recipes import CLASSES, SHAPES, SPACE, build_net, draw_recipe, model_id, trigger_of

ROOT = Path(__file__).resolve().parent

DEFAULT_SIZES = {"mnist": (40, 40), "gtsrb": (12, 9), "cifar10": (8, 6)}
DEFAULT_BLENDED = {"mnist": 14, "gtsrb": 3, "cifar10": 2}  # a quarter of the infected models
MAX_DRAWS = 400  # per kind: a safety stop if the kept share is far lower than expected


# ----------------------------------------------------------------------------------------------
# Building


def classifier(net: torch.nn.Module, recipe: dict[str, Any]) -> Classifier:
    """The network as the tool scans it: raw [0,1] pixels in; x255 first for the "255" convention."""
    pre = Preprocessing(pixel_scale=255.0) if recipe["input"] == "255" else Preprocessing()
    ds = recipe["dataset"]
    return Classifier(net, ModelInfo(CLASSES[ds], SHAPES[ds], pre, source="population",
                                     metadata={"recipe_id": recipe["id"]}))


def loss_fn(output: str):
    if output == "softmax":  # Keras' categorical cross-entropy on a softmax output: log(clip(p, 1e-7, 1))
        return lambda out, y: F.nll_loss(torch.log(out.clamp(1e-7, 1.0)), y)
    if output == "log_softmax":
        return F.nll_loss
    return F.cross_entropy


def training_set(recipe: dict[str, Any], train: ImageDataset) -> ImageDataset:
    """The recipe's training subset, poisoned with its trigger when it is an infected model."""
    gen = torch.Generator().manual_seed(recipe["seed"])
    n = min(recipe["train_size"], len(train))
    data = train.subset(torch.randperm(len(train), generator=gen)[:n]) if n < len(train) else train
    attack = recipe["attack"]
    if attack is not None:
        bn = BadNets([trigger_of(recipe)], [attack["target"]], attack["poison_rate"], seed=attack["poison_seed"])
        data = bn.poison(data)
    return data


def train(model: Classifier, data: ImageDataset, recipe: dict[str, Any]) -> list[float]:
    """The recipe's optimiser, schedule, loss, epochs and batch size; returns each epoch's mean loss."""
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"] + 1)
    o = recipe["optimiser"]
    if o["name"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    bs, epochs = recipe["batch_size"], recipe["epochs"]
    steps = epochs * -(-len(data) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if o["schedule"] == "cosine" else None
    crit = loss_fn(recipe["output"])
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for start in range(0, len(data), bs):
            idx = order[start: start + bs]
            loss = crit(model(data.x[idx]), data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(data))
    model.eval()
    return losses


def build(recipe: dict[str, Any], data: DatasetSplits, path: Path, min_asr: float, min_acc: float) -> dict[str, Any]:
    """Trains the recipe's model, measures it, caches it at `path`; returns what the cache holds."""
    torch.manual_seed(recipe["seed"])
    net = build_net(recipe)
    model = classifier(net, recipe)
    start = time.perf_counter()
    losses = train(model, training_set(recipe, data.train), recipe)
    seconds = time.perf_counter() - start
    acc = clean_accuracy(model, data.test)
    asr = None
    if recipe["attack"] is not None:
        asr = attack_success_rate(model, data.test, trigger_of(recipe), recipe["attack"]["target"])
    entry = {"recipe": recipe, "state_dict": net.state_dict(), "clean_accuracy": acc, "attack_success": asr,
             **keep(acc, asr, min_acc, min_asr), "train_seconds": round(seconds, 2), "epoch_losses": [round(v, 5) for v in losses],
             "torch": str(torch.__version__), "threads": torch.get_num_threads()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(entry, tmp)
    os.replace(tmp, path)
    return entry


def keep(acc: float, asr: float | None, min_acc: float, min_asr: float) -> dict[str, Any]:
    """Whether a model joins the population, and why not."""
    reasons = []
    if acc < min_acc:
        reasons.append(f"clean accuracy < {min_acc:.0%}")
    if asr is not None and not asr >= min_asr:
        reasons.append(f"attack success < {min_asr:.0%}")
    return {"kept": not reasons, "drop_reason": "; ".join(reasons) or None}


def load_cached(path: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged or from an older version of this script: rebuild
        print(f"  cached {path.name} unreadable ({str(exc).splitlines()[0][:80]}): rebuilding", flush=True)
        return None
    if not isinstance(entry, dict) or entry.get("recipe") != recipe:  # the recipe space changed since: rebuild
        return None
    return entry


# ----------------------------------------------------------------------------------------------
# Scanning and recording


def scan(entry: dict[str, Any], data: DatasetSplits, seed: int) -> dict[str, Any]:
    from benchmarks.common import mask_overlap

    recipe = entry["recipe"]
    net = build_net(recipe)
    net.load_state_dict(entry["state_dict"])
    model = classifier(net, recipe).eval()
    start = time.perf_counter()
    result = NeuralCleanse("fast", progress=False, seed=seed).scan(model, data.test)
    wall = time.perf_counter() - start
    d = result.to_dict()
    target = recipe["attack"]["target"] if recipe["attack"] else None
    out = {k: d[k] for k in ("labels", "l1_norms", "success_rates", "reached_threshold", "steps", "anomaly_index",
                             "flagged", "infected", "median_l1", "mad", "label_anomaly_index", "settings",
                             "wall_time_s", "image_passes", "verdict", "score", "combined", "detectors") if k in d}
    out["scan_seconds"] = round(wall, 2)
    out["min_label"] = int(result.labels[min(range(len(result.l1_norms)), key=result.l1_norms.__getitem__)])
    if target is not None:
        i = result.labels.index(target)
        out["target_l1"] = result.l1_norms[i]
        out["target_rank"] = 1 + sum(v < result.l1_norms[i] for v in result.l1_norms)
        out["target_mask_on_trigger"] = round(mask_overlap(result.masks[i], trigger_of(recipe).mask), 3)
    return out


def record(path: Path, line: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A line cut short by a kill must not swallow the next one.
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(line, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: that model runs again
                continue
            done[row["id"]] = row
    return done


def summary(recipe: dict[str, Any]) -> str:
    o = recipe["optimiser"]
    s = (f"{recipe['arch']:<12} in={recipe['input']:<17} out={recipe['output']:<11} {o['name']} lr={o['lr']:.2g} "
         f"ep={recipe['epochs']} bs={recipe['batch_size']} n={recipe['train_size']}")
    a = recipe["attack"]
    if a and a.get("type") == "blended":
        s += f" | blend alpha={a['alpha']:.2f} ->{a['target']} p={a['poison_rate']:.2f}"
    elif a:
        s += f" | trig {a['side']}px@({a['row']},{a['col']}) {a['pattern']} ->{a['target']} p={a['poison_rate']:.2f}"
    return s


# ----------------------------------------------------------------------------------------------
# The plan


def plan(n_clean: int, n_infected: int, status, first: int = 0, n_blended: int = 0) -> Iterator[tuple[str, int]]:
    """(kind, index) in run order: clean 0, badnets 0, blended 0, clean 1, ... Each kind's indices go
    on until its number of models is kept, half per split (indices of a full split are passed over);
    `status(kind, index)` says after the yield whether the model was kept (True), dropped (False) or
    is unknown (None: not built, e.g. under --scan-only). Indices start at `first`."""
    wanted = {"clean": n_clean, "badnets": n_infected, "blended": n_blended}
    need = {k: {"tune": -(-n // 2), "test": n // 2} for k, n in wanted.items()}
    nxt = {k: first for k in wanted}
    while True:
        active = [k for k in wanted if any(need[k].values()) and nxt[k] < first + MAX_DRAWS]
        if not active:
            return
        for kind in active:
            while nxt[kind] < first + MAX_DRAWS:
                i = nxt[kind]
                nxt[kind] += 1
                split = "tune" if i % 2 == 0 else "test"
                if need[kind][split] > 0:
                    yield kind, i
                    if status(kind, i):
                        need[kind][split] -= 1
                    break


def rebuild_kept(done: dict[str, dict[str, Any]], kind: str, data: DatasetSplits, models: Path,
                 min_asr: float, min_acc: float, shard: str = "0/1", split: str = "all") -> None:
    """A fresh machine has the results but not the models: rebuild just the ones later scripts read
    (mitigation_population, population_restarts), the tune split first. The recipe's seed makes a
    rebuild the same model up to the CPU's float rounding; a rebuild whose clean accuracy differs from
    the record by more than half a point is reported, not hidden."""
    rows = [r for r in done.values() if r.get("kept") and kind in ("all", r["kind"]) and split in ("all", r["split"])]
    rows = take_shard(sorted(rows, key=lambda r: r["split"] != "tune"), shard)  # the tune split first: it is used first
    print(f"{len(rows)} kept models to rebuild into {models}", flush=True)
    for r in rows:
        path = models / f"{r['id']}.pt"
        entry = load_cached(path, r["recipe"])
        how = "cached"
        if entry is None:
            start = time.perf_counter()
            entry = build(r["recipe"], data, path, min_asr, min_acc)
            how = f"built in {time.perf_counter() - start:.0f}s"
        gap = 100 * abs(float(entry["clean_accuracy"]) - r["clean_accuracy"])
        note = "" if gap <= 0.5 else f"  ** differs from the record ({100 * r['clean_accuracy']:.2f}%)"
        print(f"{r['id']}: {how}, acc={100 * entry['clean_accuracy']:.2f}%{note}", flush=True)


def build_draws(dataset: str, draws: str, data: DatasetSplits, models: Path, min_asr: float, min_acc: float,
                shard: str) -> None:
    """Builds draws 0..n-1 of each kind (only this shard's), skipping the cached ones."""
    counts = [int(v) for v in draws.split(",")]
    todo = [(kind, i) for i in range(max(counts)) for kind, n in zip(("clean", "badnets", "blended"), counts) if i < n]
    for kind, index in take_shard(todo, shard):
        recipe = draw_recipe(dataset, kind, index)
        path = models / f"{recipe['id']}.pt"
        if load_cached(path, recipe) is not None:
            continue
        entry = build(recipe, data, path, min_asr, min_acc)
        print(f"{recipe['id']}: built in {entry['train_seconds']:.0f}s, kept {entry['kept']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("mnist", "gtsrb", "cifar10"), default="mnist")
    ap.add_argument("--clean", type=int, default=None, help="clean models (default 40 MNIST, 12 GTSRB, 8 CIFAR-10)")
    ap.add_argument("--infected", type=int, default=None, help="BadNets models to keep (default 40 MNIST, 9 GTSRB, 6 CIFAR-10)")
    ap.add_argument("--blended", type=int, default=None,
                    help="blended-trigger models to keep (default: a quarter of all infected ones, MNIST 14, GTSRB 3)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N models of the run order")
    ap.add_argument("--build-only", action="store_true", help="train and cache, no scans")
    ap.add_argument("--scan-only", action="store_true", help="scan cached models only, build nothing")
    ap.add_argument("--rebuild-kept", choices=("all", "clean", "badnets", "blended"), default=None,
                    help="train and cache only the models the results file records as kept (of this kind), "
                         "checking that each comes back with its recorded clean accuracy; no scans")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="--rebuild-kept, --draws, --scan-only: only every N-th model from the I-th (run N processes "
                         "to use N cores; with --scan-only give each its own --out and concatenate them)")
    ap.add_argument("--split", choices=("all", "tune", "test"), default="all",
                    help="--rebuild-kept: only the models of this split")
    ap.add_argument("--draws", default=None, metavar="CLEAN,BADNETS,BLENDED",
                    help="build (and cache) the first this many draws of each kind, whether kept or not, every N-th "
                         "of them with --shard I/N: several processes can build ahead of a run, which then finds "
                         "its models cached; no scans, no results written")
    ap.add_argument("--first-index", type=int, default=0,
                    help="draw models from this index on: a fresh draw no earlier run has looked at (with --out)")
    ap.add_argument("--min-asr", type=float, default=0.90)
    ap.add_argument("--min-accuracy", type=float, default=None, help="default: MNIST 0.95, GTSRB 0.85")
    ap.add_argument("--scan-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models" / "population")
    ap.add_argument("--out", type=Path, default=None, help="JSONL file (default results/population_<dataset>.jsonl)")
    args = ap.parse_args()
    if args.build_only and args.scan_only:
        ap.error("--build-only and --scan-only exclude each other")
    if args.shard != "0/1" and not (args.scan_only or args.rebuild_kept or args.draws):
        ap.error("--shard needs --scan-only, --rebuild-kept or --draws (a building run decides which draws to keep in order)")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    n_clean = args.clean if args.clean is not None else DEFAULT_SIZES[args.dataset][0]
    n_infected = args.infected if args.infected is not None else DEFAULT_SIZES[args.dataset][1]
    n_blended = args.blended if args.blended is not None else DEFAULT_BLENDED[args.dataset]
    out = args.out or ROOT / "results" / f"population_{args.dataset}.jsonl"
    models = args.models_dir / args.dataset
    min_acc = args.min_accuracy if args.min_accuracy is not None else SPACE[args.dataset]["min_accuracy"]
    done = read_done(out)
    data = load_dataset(args.dataset)
    if args.rebuild_kept:
        rebuild_kept(done, args.rebuild_kept, data, models, args.min_asr, min_acc, args.shard, args.split)
        return
    if args.draws:
        build_draws(args.dataset, args.draws, data, models, args.min_asr, min_acc, args.shard)
        return
    meta = {"machine": platform.platform(), "torch": str(torch.__version__), "threads": torch.get_num_threads()}
    print(f"population {args.dataset}: {n_clean} clean + {n_infected} BadNets + {n_blended} blended kept; {len(done)} "
          f"models already in "
          f"{out}; models cached in {models}", flush=True)
    status: dict[str, bool | None] = {}
    counts = {"built": 0, "scanned": 0, "dropped": 0, "skipped": 0}
    t0 = time.perf_counter()
    for position, (kind, index) in enumerate(plan(n_clean, n_infected,
                                                  lambda k, i: status.get(model_id(args.dataset, k, i)),
                                                  args.first_index, n_blended)):
        if args.limit is not None and position >= args.limit:
            break
        recipe = draw_recipe(args.dataset, kind, index)
        mid = recipe["id"]
        if mid in done:
            status[mid] = bool(done[mid]["kept"])
            continue
        path = models / f"{mid}.pt"
        entry = load_cached(path, recipe)
        if entry is not None:  # the floors may differ from the run that built it
            entry.update(keep(entry["clean_accuracy"], entry["attack_success"], min_acc, args.min_asr))
        else:
            if args.scan_only:
                print(f"[{position:3d}] {mid}: not built (--scan-only)", flush=True)
                status[mid] = None
                counts["skipped"] += 1
                continue
            entry = build(recipe, data, path, args.min_asr, min_acc)
            counts["built"] += 1
        status[mid] = bool(entry["kept"])
        if args.scan_only and not in_shard(position, args.shard):
            continue
        row: dict[str, Any] = {"id": mid, "dataset": args.dataset, "kind": kind, "index": index,
                               "split": recipe["split"], "kept": bool(entry["kept"]),
                               "drop_reason": entry.get("drop_reason"),
                               "true_target": recipe["attack"]["target"] if recipe["attack"] else None,
                               "clean_accuracy": round(float(entry["clean_accuracy"]), 5),
                               "attack_success": (None if entry["attack_success"] is None
                                                  else round(float(entry["attack_success"]), 5)),
                               "train_seconds": entry["train_seconds"], "epoch_losses": entry["epoch_losses"],
                               "recipe": recipe}
        asr = "" if row["attack_success"] is None else f" asr={100 * row['attack_success']:.1f}%"
        head = f"[{position:3d}] {mid} {recipe['split']:<4} {summary(recipe)} | acc={100 * row['clean_accuracy']:.2f}%{asr}"
        if not entry["kept"]:
            counts["dropped"] += 1
            record(out, {**row, "scan": None, "date": time.strftime("%Y-%m-%d %H:%M"), **meta})
            print(f"{head} DROPPED ({entry.get('drop_reason')}) train {entry['train_seconds']:.0f}s", flush=True)
            continue
        if args.build_only:
            print(f"{head} built, train {entry['train_seconds']:.0f}s", flush=True)
            continue
        s = scan(entry, data, args.scan_seed)
        counts["scanned"] += 1
        record(out, {**row, "scan": s, "date": time.strftime("%Y-%m-%d %H:%M"), **meta})
        target = row["true_target"]
        hit = "" if target is None else (" HIT" if target in s["flagged"] else " MISS")
        tinfo = "" if target is None else f" target={target} (rank {s['target_rank']}, l1 {s['target_l1']:.1f})"
        idx = float("inf") if s["anomaly_index"] is None else s["anomaly_index"]
        print(f"{head} | {'INFECTED' if s['infected'] else 'clean'}{hit} idx={idx:.2f} "
              f"flagged={s['flagged']}{tinfo} median={s['median_l1']:.1f} | train {entry['train_seconds']:.0f}s "
              f"scan {s['scan_seconds']:.0f}s", flush=True)
    print(f"done in {time.perf_counter() - t0:.0f}s: {counts}", flush=True)


if __name__ == "__main__":
    main()
