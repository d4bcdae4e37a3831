"""Mitigation judged by the real trigger, on the infected models of the population (population.py).

A user has a few hundred to a few thousand clean images and no training data. For each kept infected
model, and each size N of that clean set (drawn from the MNIST/GTSRB test split), this scans the model
on the N images, unlearns the true target's reversed trigger with each recipe ("sized", the default,
and "paper", the published one) through `neuralcleanse.mitigation.mitigate` exactly as the CLI runs it
(half the N images tune, half are held out), and records the REAL trigger's attack success and the
clean accuracy before and after on the held-out half, and the rescan's verdict. One JSON line per
(model, N, recipe) in benchmarks/results/unlearning_population_<dataset><tag>.jsonl, written as it goes;
a restart skips what is there. The models come from population.py's cache (rebuilt when missing).
`--method filter|prune` measures those instead (recipe "default"; results in
mitigation_population_<dataset>_<method><tag>.jsonl): for the filter, the real trigger's false-negative rate at
the 5% false-positive threshold, and for pruning the real trigger's success after.

The script's own defaults are the first recipe's (one round, no distillation); the library's default
unlearning (since 0.6) is run with the flags of the first line, which wrote unlearning_population_mnist_default.jsonl:

    python -m benchmarks.mitigation_population --split all --recipes sized --rounds 3 --min-rounds 3 \
        --tolerance 0.02 --distill 1 --tag _default
    python -m benchmarks.mitigation_population --split test --recipes sized --rounds 3 --min-rounds 3 \
        --tolerance 0.02 --distill 1 --sizes 250,500,2000 --tag _sizes --plot docs/unlearning_sizes_mnist.png
    python -m benchmarks.mitigation_population --method filter --filter-score lda --split test --tag _lda
    python -m benchmarks.mitigation_population --method prune --split test
    python -m benchmarks.mitigation_population --tag _sizes --summary    # the table of what is recorded

A fresh draw (models no run has looked at) has its own population file: `python -m benchmarks.population
--first-index 200 --out benchmarks/results/population_mnist_fresh200.jsonl` makes it (and, with
--rebuild-kept badnets, rebuilds its models on a fresh machine); pass it here with --population.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import seed_triggers, take_shard
from benchmarks.population import classifier
from benchmarks.population_recipes import build_net, trigger_of

from neuralcleanse import NeuralCleanse, load_dataset
from neuralcleanse.data.dataset import DatasetSplits
from neuralcleanse.mitigation import Backdoor, InputFilter, make_method, mitigate
from neuralcleanse.metrics import measure
from neuralcleanse.mitigation.runner import split_for_mitigation
from neuralcleanse.mitigation.unlearning import LR_CANDIDATES, Unlearner
from neuralcleanse.mitigation.verify import REMOVED

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("sized", "paper")


def population(dataset: str, split: str, path: Path | None = None) -> list[dict]:
    path = path or ROOT / "benchmarks" / "results" / f"population_{dataset}.jsonl"
    rows = [json.loads(l) for l in path.open()]
    return [r for r in rows if r["kept"] and r["true_target"] is not None and split in (r["split"], "all")]


def model_of(row: dict, dataset: str):
    entry = torch.load(ROOT / "benchmarks" / "models" / "population" / dataset / f"{row['id']}.pt", map_location="cpu",
                       weights_only=True)
    net = build_net(entry["recipe"])
    net.load_state_dict(entry["state_dict"])
    return classifier(net, entry["recipe"]).eval(), entry["recipe"]


SHARE = 0.2  # Unlearner's trigger_share; records without a "+share" suffix used it
STEPS = 300  # and its steps a round
LABEL_TOLERANCE = 0.01  # the rate search's tolerance before 0.5: records without a "+tol" suffix used it


def recipe_label(recipe_name: str, rounds: int = 1, min_rounds: int = 1, tolerance: float = LABEL_TOLERANCE,
                 freeze_norm: bool = False, distill: float = 0.0, share: float = SHARE,
                 rates: tuple[float, ...] = LR_CANDIDATES, steps: int = STEPS, mixup: float = 0.0,
                 scan_preset: str = "fast", roam: float = 0.0, adversarial: float = 0.0,
                 refresh: int = 10, budget: float = 3.0, gate: float | None = None, extra_seeds: int = 0) -> str:
    return (recipe_name + (f"+rounds{rounds}" if rounds > 1 else "") + (f"+min{min_rounds}" if min_rounds > 1 else "")
            + (f"+tol{tolerance:g}" if tolerance != LABEL_TOLERANCE else "") + ("+frozennorm" if freeze_norm else "")
            + (f"+kd{distill:g}" if distill else "") + (f"+share{share:g}" if share != SHARE else "")
            + ("+rates" + "/".join(f"{r:g}" for r in rates) if tuple(rates) != LR_CANDIDATES else "")
            + (f"+steps{steps}" if steps != STEPS else "") + (f"+mix{mixup:g}" if mixup else "")
            + (f"+scan{scan_preset}" if scan_preset != "fast" else "") + (f"+roam{roam:g}" if roam else "")
            + (f"+adv{adversarial:g}" + (f"/{refresh}" if refresh != 10 else "")
               + (f"/b{budget:g}" if budget != 3.0 else "") if adversarial else "")
            + (f"+gate{gate:g}" if gate is not None else "") + (f"+seeds{extra_seeds}" if extra_seeds else ""))


def filter_label(score: str, top_fraction: float | None) -> str:
    """Labels as recorded since 0.4: "default" is the published score at 1%, "default+z" 0.5's z score
    (both fitted on half the tuning split before 0.6); "weighted" is 0.6's default, "lda" 0.7's."""
    if score in ("weighted", "lda"):
        return score + (f"+top{top_fraction:g}" if top_fraction is not None else "")
    return ("default" if top_fraction in (None, 0.01) else f"top{top_fraction:g}") + ("+z" if score == "z" else "")


def run_one(row: dict, dataset: str, size: int, recipe_name: str, label: str, test, method: str = "unlearn",
            rounds: int = 1, min_rounds: int = 1, tolerance: float = LABEL_TOLERANCE,
            top_fraction: float | None = None, filter_score: str = "weighted", freeze_norm: bool = False,
            distill: float = 0.0, share: float = SHARE, rates: tuple[float, ...] = LR_CANDIDATES,
            steps: int = STEPS, mixup: float = 0.0, scan_preset: str = "fast", roam: float = 0.0,
            adversarial: float = 0.0, refresh: int = 10, budget: float = 3.0, gate: float | None = None,
            extra_seeds: int = 0) -> dict:
    model, recipe = model_of(row, dataset)
    user = test.random_sample(size, seed=1000 + size)
    target = recipe["attack"]["target"]
    real = [Backdoor(target, trigger_of(recipe))]
    entering: list[dict] = []
    if gate is not None:
        entering = record_gated_phase(real, split_for_mitigation(DatasetSplits(user, user))[1])
    start = time.perf_counter()
    # Another preset's scan also sets the rescans between unlearning rounds (they repeat its settings).
    scan = NeuralCleanse(scan_preset, progress=False, seed=0, **({} if scan_preset == "fast" else {"restarts": 0})
                         ).scan(model, user)
    extra_triggers = [Backdoor(target, t) for t in seed_triggers(model, user, target, range(1, 1 + extra_seeds),
                                                                   test.num_classes)]
    if method == "unlearn" and recipe_name == "paper":
        # The published recipe on all of the tuning half (as these records were made), one round.
        chosen = Unlearner("paper", data_fraction=1.0, trigger_share=share)
    elif method == "unlearn":
        chosen = Unlearner(steps=steps, rounds=rounds, min_rounds=min_rounds, accuracy_tolerance=tolerance,
                           freeze_norm=freeze_norm, distill=distill, trigger_share=share, lr_candidates=rates,
                           mixup=mixup, roam=roam, adversarial=adversarial, refresh=refresh,
                           adversarial_budget=budget, adversarial_gate=gate)
    elif method == "filter":
        chosen = InputFilter(top_fraction, score=filter_score)
    else:  # prune, anp, unlearn+anp: the library's defaults
        chosen = make_method(method)
    out = mitigate(model, scan, DatasetSplits(user, user), chosen, labels=[target], real=real,
                   extra_triggers=extra_triggers)
    extra = {}
    if out.filter_rates is not None:
        extra = {"filter_fpr": out.filter_rates.false_positive_rate, "filter_fnr_real": out.filter_rates.false_negative_rate}
    if out.pruning is not None:
        extra = {"pruned_fraction": out.pruning.fraction, "prune_reached": out.pruning.reached}
    if "anp" in out.details:
        anp = out.details["anp"]
        extra = {"anp_threshold": anp["threshold"], "anp_pruned": anp["pruned_count"],
                 "anp_pruned_fraction": anp["pruned_fraction"], "anp_seconds": anp["seconds"]}
    if gate is not None:
        # What the plain rounds left (the model entering the gated phase) and the gate's checks: from
        # one run with the gate at 0 the outcome at any gate can be read off (`gate_outcomes`).
        extra = {"plain_real_after": entering[0]["real"], "plain_clean_after": entering[0]["clean"],
                 "plain_checks_by_budget": entering[0]["checks"],
                 "gate_checks": out.details["unlearning"].get("adversarial_gate", [])}
    return {"id": row["id"], "split": row["split"], "arch": recipe["arch"], "output": recipe["output"],
            "method": method, "size": size, "recipe": label, **extra,
            "lr_search": out.details.get("unlearning", {}).get("lr_search"),
            "rounds_run": out.settings.get("rounds"), "target_flagged_by_scan": target in scan.flagged,
            "real_before": out.before.worst_attack_success, "real_after": out.after.worst_attack_success,
            "clean_before": out.before.clean_accuracy, "clean_after": out.after.clean_accuracy,
            "reversed_after": out.reversed_after.worst_attack_success, "lr": out.settings.get("lr"),
            "verdict": out.verdict, "seconds": round(time.perf_counter() - start, 1),
            **({"rescan_index_after": out.rescan.index_after[target],
                "rescan_norm_ratio_after": out.rescan.norms_after[target] / float(statistics.median(
                    scan.l1_norms)),
                "rescan_flagged_after": out.rescan.flagged_after} if out.rescan is not None else {})}


def record_gated_phase(real: list[Backdoor], held_out) -> list[dict]:
    """Measures, with the real trigger on the held-out half, each model that enters Unlearner's gated
    phase (benchmark instrumentation: the library itself never sees the real trigger)."""
    seen: list[dict] = []
    original = getattr(Unlearner._gated_rounds, "__wrapped__", Unlearner._gated_rounds)

    def measured(self, model, backdoors, data, *args, **kwargs):
        m = measure(model.to(self.device), held_out, real, device=self.device)
        # The gate's check at other budgets too (the library's is GATE_BUDGET), to choose it on tune.
        seen.append({"real": m.worst_attack_success, "clean": m.clean_accuracy,
                     "checks": {b: round(self.gate_check(model, backdoors, data, budget=b), 4) for b in (0.5, 1, 2, 3)}})
        return original(self, model, backdoors, data, *args, **kwargs)

    measured.__wrapped__ = original
    Unlearner._gated_rounds = measured  # one model at a time in this process
    return seen


def gate_outcomes(path: Path, label: str, gates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)) -> str:
    """From runs with every gated round taken (gate 0): the outcome at each gate and check budget, a
    model taking the adversarial round when its check reached the gate, else keeping what the plain
    rounds left."""
    rows = [r for r in map(json.loads, path.open()) if r["recipe"] == label and "plain_checks_by_budget" in r]
    lines = ["| split | check budget | gate | models | rounds taken | real ≤ 5% | clean drop (median) |",
             "|---|---|---|---|---|---|---|"]
    for split in ("tune", "test"):
        sel = [r for r in rows if r["split"] == split]
        for budget in sel[0]["plain_checks_by_budget"] if sel else ():
            for g in gates:
                took = [r["plain_checks_by_budget"][budget] >= g for r in sel]
                real = [r["real_after"] if t else r["plain_real_after"] for r, t in zip(sel, took)]
                clean = [r["clean_before"] - (r["clean_after"] if t else r["plain_clean_after"])
                         for r, t in zip(sel, took)]
                lines.append(f"| {split} | {budget} | {g:g} | {len(sel)} | {sum(took)} | "
                             f"{sum(v <= 0.05 for v in real)}/{len(sel)} | {statistics.median(clean):.1%} |")
    return "\n".join(lines)


def summarise(path: Path) -> str:
    rows = [json.loads(l) for l in path.open()] if path.exists() else []
    lines = ["| recipe | split | N | models | real attack after (median) | real ≤ 5% | clean accuracy drop (median) | "
             "filter: real triggers missed (median) | rescan finds none | of those, real > 5% |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for recipe in sorted({r["recipe"] for r in rows}):
        for split in ("tune", "test"):
            for size in sorted({r["size"] for r in rows}):
                sel = [r for r in rows if r["recipe"] == recipe and r["size"] == size and r["split"] == split]
                if not sel:
                    continue
                # Runs recorded before the verdict's wording changed said "backdoor removed".
                removed = [r for r in sel if r["verdict"] in (REMOVED, "backdoor removed")]
                fnr = [r["filter_fnr_real"] for r in sel if "filter_fnr_real" in r]
                lines.append(
                    f"| {recipe} | {split} | {size} | {len(sel)} | {statistics.median(r['real_after'] for r in sel):.1%} | "
                    f"{sum(r['real_after'] <= 0.05 for r in sel)}/{len(sel)} | "
                    f"{statistics.median(r['clean_before'] - r['clean_after'] for r in sel):.1%} | "
                    f"{f'{statistics.median(fnr):.1%}' if fnr else '–'} | "
                    f"{len(removed)}/{len(sel)} | {sum(r['real_after'] > 0.05 for r in removed)}/{len(removed)} |")
    return "\n".join(lines)


def plot_sizes(path: Path, recipe: str, split: str, out: Path) -> None:
    """The real attack left and the accuracy given up against the number of clean images the user has:
    one dot a model, the median joined, the goal's 5% line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in map(json.loads, path.open()) if r["recipe"] == recipe and r["split"] == split]
    sizes = sorted({r["size"] for r in rows})
    if not sizes:
        raise SystemExit(f"nothing recorded for {recipe} on the {split} split in {path}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], lambda r: r["real_after"], "real trigger's attack success after (%)"),
                           (axes[1], lambda r: r["clean_before"] - r["clean_after"], "clean accuracy given up (points)")):
        for i, size in enumerate(sizes):
            vals = [100 * key(r) for r in rows if r["size"] == size]
            ax.scatter([i + 0.25 * (j / max(len(vals) - 1, 1) - 0.5) for j in range(len(vals))], vals, s=14, alpha=0.6,
                       color="tab:blue")
        medians = [100 * statistics.median(key(r) for r in rows if r["size"] == size) for size in sizes]
        ax.plot(range(len(sizes)), medians, "o-", color="black", label="median")
        ax.set_xticks(range(len(sizes)), [f"{s:,}" for s in sizes])
        ax.set_xlim(-0.5, len(sizes) - 0.5)
        ax.set_xlabel("clean images the user has (half tune, half held out)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].axhline(5, color="tab:red", ls="--", lw=1, label="5% (the goal)")
    axes[0].set_yscale("symlog", linthresh=1)
    axes[0].set_ylim(0, 100)
    axes[1].axhline(1.5, color="tab:red", ls="--", lw=1, label="1.5 points (the goal)")
    for ax in axes:
        ax.legend(loc="upper right")
    n = len({r["id"] for r in rows})
    fig.suptitle(f"Unlearning ({recipe}) on {n} infected {path.stem.split('_')[2]} models, {split} split; "
                 "judged by the real trigger")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--split", default="test", choices=("tune", "test", "all"))
    ap.add_argument("--sizes", default="1000")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="only every N-th model from the I-th: N processes share one results file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--method", default="unlearn",
                    choices=("unlearn", "filter", "prune", "anp", "unlearn+anp", "sau", "unlearn+sau"))
    ap.add_argument("--tag", default="", help="suffix of the results file, e.g. for a run recording more fields")
    ap.add_argument("--summary", action="store_true", help="only print the table of what is recorded")
    ap.add_argument("--plot", default=None, metavar="PNG",
                    help="draw the real attack left and the accuracy cost against N for this run's recipe and split")
    ap.add_argument("--rounds", type=int, default=1, help="unlearn: up to this many rounds, rescanning between them")
    ap.add_argument("--min-rounds", type=int, default=1, help="unlearn: rounds run whatever the rescan finds")
    ap.add_argument("--top-fraction", type=float, default=None,
                    help="filter: the share of the layer's units scored (default: the score's own)")
    ap.add_argument("--freeze-norm", action="store_true", help="unlearn: keep batch-norm statistics")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="unlearn: weight of the distillation term (Unlearner(distill=)); labels get +kd<weight>")
    ap.add_argument("--arch", default=None, help="only models of this architecture (e.g. bn_gap)")
    ap.add_argument("--ids", default=None, help="only these model ids, comma-separated")
    ap.add_argument("--filter-score", default="weighted", choices=("lda", "weighted", "z", "mean"),
                    help="filter: InputFilter(score=); mean is the published score, z 0.5's default")
    ap.add_argument("--tolerance", type=float, default=LABEL_TOLERANCE,
                    help="unlearn: clean accuracy the learning-rate search may give up")
    ap.add_argument("--share", type=float, default=SHARE, help="unlearn: the share of inputs stamped (trigger_share)")
    ap.add_argument("--steps", type=int, default=STEPS, help="unlearn: optimiser steps a round")
    ap.add_argument("--mixup", type=float, default=0.0, help="unlearn: share of images mixed (Unlearner(mixup=))")
    ap.add_argument("--scan-preset", default="fast", choices=("fast", "original"),
                    help="the scan whose triggers are treated (original: one seed, no restarts)")
    ap.add_argument("--rates", default=None, help="unlearn: the rates the search tries, comma-separated")
    ap.add_argument("--roam", type=float, default=0.0, help="unlearn: share of stamps moved anywhere (Unlearner(roam=))")
    ap.add_argument("--adversarial", type=float, default=0.0,
                    help="unlearn: share of each batch stamped with triggers re-found during training")
    ap.add_argument("--refresh", type=int, default=10, help="unlearn: batches between re-finding them")
    ap.add_argument("--budget", type=float, default=3.0,
                    help="unlearn: re-found triggers' L1 budget, in reversed triggers' norms")
    ap.add_argument("--population", type=Path, default=None,
                    help="the population's results file (default results/population_<dataset>.jsonl), e.g. a fresh "
                         "draw made with population.py --first-index --out")
    ap.add_argument("--gate", type=float, default=None,
                    help="unlearn: Unlearner(adversarial_gate=); at 0 every model takes the round, and the summary "
                         "reads off the outcome at other gates")
    ap.add_argument("--extra-seeds", type=int, default=0,
                    help="unlearn: also treat the target reversed with this many other scan seeds (1, 2, ...)")
    args = ap.parse_args()
    rates = tuple(float(v) for v in args.rates.split(",")) if args.rates else LR_CANDIDATES
    torch.set_num_threads(args.threads)
    name = (f"unlearning_population_{args.dataset}{args.tag}" if args.method == "unlearn"
            else f"mitigation_population_{args.dataset}_{args.method}{args.tag}")
    path = ROOT / "benchmarks" / "results" / f"{name}.jsonl"
    recipes = (args.recipes.split(",") if args.method == "unlearn"
               else [filter_label(args.filter_score, args.top_fraction)])
    # The label each run is recorded (and found again) under.
    labels = {recipe: recipe_label(recipe, args.rounds, args.min_rounds, args.tolerance, args.freeze_norm, args.distill,
                                   args.share, rates, args.steps, args.mixup, args.scan_preset, args.roam,
                                   args.adversarial, args.refresh, args.budget, args.gate, args.extra_seeds)
              for recipe in recipes}
    if not args.summary:
        done = {(r["id"], r["size"], r["recipe"]) for r in map(json.loads, path.open())} if path.exists() else set()
        test = load_dataset(args.dataset).test
        rows = [r for r in population(args.dataset, args.split, args.population) if args.arch in (None, r["recipe"]["arch"])
                and (args.ids is None or r["id"] in args.ids.split(","))]
        for row in take_shard(rows[: args.limit], args.shard):
            for size in (int(v) for v in args.sizes.split(",")):
                for recipe in recipes:
                    if (row["id"], size, labels[recipe]) in done:
                        continue
                    line = run_one(row, args.dataset, size, recipe, labels[recipe], test, args.method, args.rounds,
                                   args.min_rounds, args.tolerance, args.top_fraction, args.filter_score, args.freeze_norm,
                                   args.distill, args.share, rates, args.steps, args.mixup, args.scan_preset, args.roam,
                                   args.adversarial, args.refresh, args.budget, args.gate, args.extra_seeds)
                    with path.open("a") as f:
                        f.write(json.dumps(line) + "\n")
                    print(f"{line['id']} N={size} {recipe:5s} real {line['real_before']:.0%} -> {line['real_after']:.0%}"
                          f" clean {line['clean_before']:.1%} -> {line['clean_after']:.1%} lr {line['lr']} "
                          f"{line['verdict']} {line.get('filter_fnr_real', '')} ({line['seconds']} s)", flush=True)
    print(summarise(path))
    if args.gate is not None:
        print(gate_outcomes(path, labels[recipes[0]]))
    if args.plot:
        plot_sizes(path, labels[recipes[0]], args.split, Path(args.plot))


if __name__ == "__main__":
    main()
