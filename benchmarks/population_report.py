"""Miss and false-alarm rates of detection rules over the scanned population (benchmarks.population).

    python -m benchmarks.population_report                  # every population_<dataset>.jsonl there is
    python -m benchmarks.population_report --dataset mnist

Reads benchmarks/results/population_<dataset>.jsonl and writes benchmarks/results/population_<dataset>.md
(tables), population_<dataset>_summary.json (the same figures), docs/population_<dataset>_roc.png and
docs/population_<dataset>_scores.png.

Every score turns a model's per-label L1 norms into a per-label index (larger: more suspicious); a
rule flags the labels whose norm is below the median and whose index is over its threshold, and the
model's score is its largest such index (for the published rule: the anomaly index of the smallest
norm). Scores:

- published: the MAD anomaly index of the raw norms (neuralcleanse.detection.outlier.mad_outliers), threshold 2;
- published_tuned: the same index, threshold chosen on the tune split;
- log_mad: the MAD anomaly index of log(norms);
- log_mad_floor: log_mad with the robust scale floored at 0.1 (a tenth in log units, ~10% of the norm),
  so a tight cluster of clean norms cannot make a small gap look huge;
- loo_log_mad: each label's log norm against the median and MAD of the *other* labels' log norms,
  so an outlier does not widen the scale it is judged by;
- ratio: median norm / the label's norm.

Thresholds of all but `published` are chosen on the tune split only: the smallest threshold that
flags at most --max-false-alarms (5%) of the tune split's clean models; the test split then shows
what they give on models they were not chosen on. AUROC (infected vs clean, by the model's score) is
computed with the rank formula (Mann-Whitney U, ties counted half).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from neuralcleanse.detection.evidence import Evidence
from neuralcleanse.detection.outlier import CONSISTENCY, mad_outliers
from neuralcleanse.detection.rules import DEFAULT_RULE, get_rule

ROOT = Path(__file__).resolve().parent

FACETS = {
    "architecture": lambda r: r["recipe"]["arch"],
    "input convention": lambda r: r["recipe"]["input"],
    "output": lambda r: r["recipe"]["output"],
    "optimiser": lambda r: r["recipe"]["optimiser"]["name"],
}
# Facets only infected models have: their rows compare those infected models with all clean ones.
TRIGGER_FACETS = {
    "trigger pattern": lambda r: r["recipe"]["attack"].get("pattern", "blended"),
    "trigger side": lambda r: f"{r['recipe']['attack']['side']}px" if "side" in r["recipe"]["attack"] else "whole image",
    "poison rate": lambda r: "5-10%" if r["recipe"]["attack"]["poison_rate"] < 0.10 else
    ("10-15%" if r["recipe"]["attack"]["poison_rate"] < 0.15 else "15-20%"),
}
LOG_FLOOR = 0.1


# ----------------------------------------------------------------------------------------------
# Scores: per-label indices from the norms


def _published(norms: np.ndarray) -> np.ndarray:
    return np.asarray(mad_outliers(norms.tolist(), 2.0).label_indices)


def _mad_index(values: np.ndarray, floor: float = 0.0) -> np.ndarray:
    median = np.median(values)
    scale = max(CONSISTENCY * float(np.median(np.abs(values - median))), floor)
    dev = np.abs(values - median)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dev == 0, 0.0, dev / scale if scale > 0 else np.inf)


def _loo(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values))
    for i in range(len(values)):
        rest = np.delete(values, i)
        med = np.median(rest)
        scale = CONSISTENCY * float(np.median(np.abs(rest - med)))
        dev = med - values[i]  # only below the median of the others counts
        out[i] = 0.0 if dev <= 0 else (dev / scale if scale > 0 else np.inf)
    return out


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "default": lambda n: _mad_index(np.log(n)),
    "published": _published,
    "published_tuned": _published,
    "log_mad": lambda n: _mad_index(np.log(n)),
    "log_mad_floor": lambda n: _mad_index(np.log(n), LOG_FLOOR),
    "loo_log_mad": lambda n: _loo(np.log(n)),
    "ratio": lambda n: np.median(n) / n,
}
FIXED = {"published": 2.0}
DESCRIPTION = {
    "default": f"the scan's default rule, `{DEFAULT_RULE}`: log_mad at the threshold for this many labels",
    "published": "MAD anomaly index of the raw L1 norms, threshold 2 (what the scan reports)",
    "published_tuned": "the same index, threshold chosen on tune",
    "log_mad": "MAD anomaly index of log(L1 norms)",
    "log_mad_floor": f"log_mad with the scale (1.4826·MAD of the logs) floored at {LOG_FLOOR}",
    "loo_log_mad": "log norm against median and MAD of the other labels' log norms",
    "ratio": "median norm / norm",
}


def label_scores(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per score: each label's index, which labels lie below the median, and the model's score."""
    s = row["scan"]
    norms = np.maximum(np.asarray(s["l1_norms"], dtype=np.float64), 1e-9)
    below = norms < np.median(norms)
    out = {}
    for name, fn in SCORES.items():
        idx = np.asarray(fn(norms), dtype=np.float64)
        score = float(np.max(np.where(below, idx, -np.inf))) if below.any() else 0.0
        out[name] = {"index": idx, "below": below, "score": score}
    return out


def flagged(ls: dict[str, Any], labels: list[int], threshold: float) -> list[int]:
    return [labels[i] for i in np.flatnonzero(ls["below"] & (ls["index"] > threshold))]


# ----------------------------------------------------------------------------------------------
# Statistics


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """P(score of an infected model > score of a clean one), ties counted half, from ranks."""
    if not pos or not neg:
        return None
    values = np.asarray(pos + neg, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_vals = values[order]
    i = 0
    while i < len(values):  # average ranks over ties (inf included)
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n1, n0 = len(pos), len(neg)
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n0))


def tune_threshold(clean_scores: list[float], max_false_alarms: float) -> float:
    """The smallest threshold t (flag when score > t) with at most max_false_alarms of these flagged."""
    s = sorted(clean_scores, reverse=True)
    allowed = int(math.floor(max_false_alarms * len(s) + 1e-9))
    if allowed >= len(s):
        return float("-inf")
    return float(s[allowed])


def evaluate(rows: list[dict], scored: dict[str, dict], name: str, threshold: float) -> dict[str, Any]:
    """Confusion table, detection and false alarms of one rule over some models."""
    clean = [r for r in rows if r["true_target"] is None]
    bad = [r for r in rows if r["true_target"] is not None]
    tp = sum(scored[r["id"]][name]["score"] > threshold for r in bad)
    fp = sum(scored[r["id"]][name]["score"] > threshold for r in clean)
    hit = sum(r["true_target"] in flagged(scored[r["id"]][name], r["scan"]["labels"], threshold) for r in bad)
    return {
        "n_clean": len(clean), "n_infected": len(bad),
        "auroc": auroc([scored[r["id"]][name]["score"] for r in bad], [scored[r["id"]][name]["score"] for r in clean]),
        "tp": tp, "fn": len(bad) - tp, "fp": fp, "tn": len(clean) - fp, "target_flagged": hit,
        "detection": hit / len(bad) if bad else None, "verdict_rate": tp / len(bad) if bad else None,
        "false_alarms": fp / len(clean) if clean else None, "threshold": threshold,
    }


# ----------------------------------------------------------------------------------------------
# Output


def pct(num: int, den: int) -> str:
    return "–" if den == 0 else f"{num}/{den} ({100 * num / den:.0f}%)"


def fmt_auc(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def fmt_t(t: float) -> str:
    return f"{t:.3g}" if math.isfinite(t) else str(t)


def recipe_line(r: dict) -> str:
    rc = r["recipe"]
    o = rc["optimiser"]
    s = f"{rc['arch']}, in {rc['input']}, out {rc['output']}, {o['name']} {o['lr']:.2g}, {rc['epochs']} ep"
    a = rc.get("attack")
    if a and a.get("type") == "blended":
        s += f"; blend alpha {a['alpha']:.2f} → {a['target']}, {a['poison_rate']:.0%}"
    elif a:
        s += f"; trigger {a['side']}px {a['pattern']} at ({a['row']},{a['col']}) → {a['target']}, {a['poison_rate']:.0%}"
    return s


def report(dataset: str, rows_all: list[dict], out_md: Path, docs: Path, max_fa: float) -> dict[str, Any]:
    scanned = [r for r in rows_all if r.get("kept") and r.get("scan")]
    dropped = [r for r in rows_all if not r.get("kept")]
    scored = {r["id"]: label_scores(r) for r in scanned}
    by_split = {s: [r for r in scanned if r["split"] == s] for s in ("tune", "test")}
    thresholds = {}
    for name in SCORES:
        if name == "default" and scanned:  # the rule as shipped: fixed by the label count, not tuned here
            thresholds[name] = get_rule(DEFAULT_RULE).threshold_for(len(scanned[0]["scan"]["l1_norms"]))
        elif name in FIXED:
            thresholds[name] = FIXED[name]
        else:
            clean_tune = [scored[r["id"]][name]["score"] for r in by_split["tune"] if r["true_target"] is None]
            thresholds[name] = tune_threshold(clean_tune, max_fa) if clean_tune else float("nan")
    overall = {s: {n: evaluate(rs, scored, n, thresholds[n]) for n in SCORES} for s, rs in by_split.items()}
    overall["all"] = {n: evaluate(scanned, scored, n, thresholds[n]) for n in SCORES}

    L: list[str] = [f"# Population verdicts: {dataset.upper()}", ""]
    n_c = sum(r["true_target"] is None for r in scanned)
    n_i = len(scanned) - n_c
    reasons: dict[str, int] = {}
    for r in dropped:
        reasons[f"{r['kind']}: {r.get('drop_reason') or 'attack success < 90%'}"] = \
            reasons.get(f"{r['kind']}: {r.get('drop_reason') or 'attack success < 90%'}", 0) + 1
    dates = sorted(r.get("date", "") for r in rows_all)
    L += [f"Made by `python -m benchmarks.population`, read by `python -m benchmarks.population_report` "
          f"({dates[0] if dates else ''} – {dates[-1] if dates else ''}). Scan: `NeuralCleanse(\"fast\", seed=0)` "
          f"on the test split; networks, recipes and rules: the scripts' docstrings.", "",
          f"Models scanned: **{n_c} clean, {n_i} infected** (tune {len(by_split['tune'])}, test "
          f"{len(by_split['test'])}). Dropped before scanning: {len(dropped)}"
          + (" (" + "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) + ")" if reasons else "") + ".", ""]
    if scanned:
        accs = [r["clean_accuracy"] for r in scanned]
        asrs = [r["attack_success"] for r in scanned if r["attack_success"] is not None]
        L += [f"Clean accuracy {100 * min(accs):.2f}–{100 * max(accs):.2f}% (median {100 * np.median(accs):.2f}%)"
              + (f"; attack success of the infected ones {100 * min(asrs):.1f}–{100 * max(asrs):.1f}%" if asrs else "")
              + ".", ""]
        rank1 = [r for r in scanned if r["true_target"] is not None and r["scan"].get("target_rank") == 1]
        L += [f"The true target had the smallest reversed norm in {pct(len(rank1), n_i)} infected models "
              "(what any rule on the norms can at best find by its smallest label).", ""]

    L += ["## Rules and thresholds", "",
          f"Thresholds other than `published` are the smallest that flag at most {max_fa:.0%} of the tune split's clean "
          "models; they are then applied unchanged to the test split.", "",
          "| score | what | threshold |", "|---|---|---|"]
    L += [f"| {n} | {DESCRIPTION[n]} | {fmt_t(thresholds[n])}{' (fixed)' if n in FIXED or n == 'default' else ' (tune)'} |"
          for n in SCORES]

    L += ["", "## Overall", "",
          "AUROC: infected against clean by the model's score. Detection: infected models whose true target is "
          "flagged. Verdict: infected models with any label flagged. False alarms: clean models with any label flagged.", ""]
    for split in ("tune", "test", "all"):
        L += [f"**{split}**" + (" (thresholds chosen here)" if split == "tune" else
                                " (thresholds from tune)" if split == "test" else " (both splits)"), "",
              "| score | AUROC | detection (target flagged) | verdict infected | false alarms | TP | FN | FP | TN |",
              "|---|---|---|---|---|---|---|---|---|"]
        for n in SCORES:
            e = overall[split][n]
            L.append(f"| {n} | {fmt_auc(e['auroc'])} | {pct(e['target_flagged'], e['n_infected'])} "
                     f"| {pct(e['tp'], e['n_infected'])} | {pct(e['fp'], e['n_clean'])} "
                     f"| {e['tp']} | {e['fn']} | {e['fp']} | {e['tn']} |")
        L.append("")

    L += ["## By recipe", "",
          "Each cell: AUROC · target flagged · false alarms, at the thresholds above. Trigger facets compare "
          "those infected models with all clean models of the split.", ""]
    facet_summary: dict[str, Any] = {}
    show = ["default", "published", "log_mad", "loo_log_mad", "ratio"]
    for facet, fn in {**FACETS, **TRIGGER_FACETS}.items():
        L += [f"### {facet}", "", "| value | split | clean | infected | " + " | ".join(show) + " |",
              "|---|---|---|---|" + "---|" * len(show)]
        trig = facet in TRIGGER_FACETS
        values = sorted({fn(r) for r in scanned if not trig or r["true_target"] is not None})
        for v in values:
            for split in ("tune", "test"):
                rs = by_split[split]
                if trig:
                    sub = [r for r in rs if r["true_target"] is None or fn(r) == v]
                else:
                    sub = [r for r in rs if fn(r) == v]
                cells = []
                for n in show:
                    e = evaluate(sub, scored, n, thresholds[n])
                    facet_summary.setdefault(facet, {}).setdefault(str(v), {}).setdefault(split, {})[n] = e
                    cells.append(f"{fmt_auc(e['auroc'])} · {e['target_flagged']}/{e['n_infected']} · "
                                 f"{e['fp']}/{e['n_clean']}")
                e0 = facet_summary[facet][str(v)][split][show[0]]
                L.append(f"| {v} | {split} | {e0['n_clean']} | {e0['n_infected']} | " + " | ".join(cells) + " |")
        L.append("")

    t = thresholds["published"]
    misses = [r for r in scanned if r["true_target"] is not None and
              r["true_target"] not in flagged(scored[r["id"]]["published"], r["scan"]["labels"], t)]
    alarms = [r for r in scanned if r["true_target"] is None and scored[r["id"]]["published"]["score"] > t]
    L += ["## Where the published rule fails", "",
          f"**Missed infected models** ({len(misses)}): true target not flagged at anomaly index 2.", "",
          "| model | split | recipe | acc | ASR | anomaly idx | flagged | target rank | target norm | median | "
          "target mask on trigger | log_mad score | loo score |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(misses, key=lambda r: scored[r["id"]]["published"]["score"]):
        s = r["scan"]
        L.append(f"| {r['id']} | {r['split']} | {recipe_line(r)} | {100 * r['clean_accuracy']:.1f}% "
                 f"| {100 * r['attack_success']:.1f}% | {scored[r['id']]['published']['score']:.2f} | {s['flagged']} "
                 f"| {s.get('target_rank')} | {s.get('target_l1', float('nan')):.1f} | {s['median_l1']:.1f} "
                 f"| {s.get('target_mask_on_trigger')} | {scored[r['id']]['log_mad']['score']:.2f} "
                 f"| {scored[r['id']]['loo_log_mad']['score']:.2f} |")
    L += ["", f"**False alarms on clean models** ({len(alarms)}):", "",
          "| model | split | recipe | acc | anomaly idx | flagged | smallest norm | median | log_mad score | loo score |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(alarms, key=lambda r: -scored[r["id"]]["published"]["score"]):
        s = r["scan"]
        L.append(f"| {r['id']} | {r['split']} | {recipe_line(r)} | {100 * r['clean_accuracy']:.1f}% "
                 f"| {scored[r['id']]['published']['score']:.2f} | {s['flagged']} | {min(s['l1_norms']):.1f} "
                 f"| {s['median_l1']:.1f} | {scored[r['id']]['log_mad']['score']:.2f} "
                 f"| {scored[r['id']]['loo_log_mad']['score']:.2f} |")
    times: dict[str, list[tuple[float, float]]] = {}
    for r in scanned:
        times.setdefault(r["recipe"]["arch"], []).append((r["train_seconds"], r["scan"]["scan_seconds"]))
    L += ["", "## Time per model", "", "Seconds on this machine (threads as in each JSON line); training includes "
          "poisoning, not the accuracy and attack measurements.", "",
          "| architecture | models | train s (median, max) | scan s (median, max) |", "|---|---|---|---|"]
    for arch, ts in sorted(times.items()):
        tr, sc = [a for a, _ in ts], [b for _, b in ts]
        L.append(f"| {arch} | {len(ts)} | {np.median(tr):.1f}, {max(tr):.1f} | {np.median(sc):.1f}, {max(sc):.1f} |")
    L.append("")
    tests = tests_table(scanned)
    L += tests["lines"]
    recovery = trigger_recovery(scanned)
    L += recovery["lines"]
    out_md.write_text("\n".join(L))

    plots(dataset, scanned, scored, thresholds, docs)
    summary = {"dataset": dataset, "thresholds": thresholds, "overall": overall, "by_facet": facet_summary,
               "n_scanned": len(scanned), "n_dropped": len(dropped), "dropped_reasons": reasons,
               "tests": tests["figures"], "trigger_recovery": recovery["figures"]}
    out_md.with_name(f"population_{dataset}_summary.json").write_text(
        json.dumps(summary, indent=1, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v))
    return summary


RECOVERY_FACTOR = 1.5  # a reversed mask at most this many times the real trigger's area counts as found


def trigger_recovery(scanned: list[dict]) -> dict[str, Any]:
    """Did the search find the real trigger? Per infected model, the target's reversed L1 norm against the real
    trigger's mask (its area for a patch, alpha times the image for a blend), per split and architecture."""
    from benchmarks.population_recipes import trigger_of

    rows = []
    for r in scanned:
        if r["true_target"] is None or r["true_target"] not in r["scan"]["labels"]:
            continue
        real = float(trigger_of(r["recipe"]).mask.sum())
        found = r["scan"]["l1_norms"][r["scan"]["labels"].index(r["true_target"])]
        rows.append({"id": r["id"], "split": r["split"], "arch": r["recipe"]["arch"], "kind": r["kind"],
                     "real_l1": round(real, 2), "reversed_l1": round(found, 2), "ratio": round(found / real, 3)})
    if not rows:
        return {"lines": [], "figures": {}}
    L = ["## Trigger recovery", "",
         f"The target's reversed mask (L1 norm) against the real trigger's mask; found: at most {RECOVERY_FACTOR}× it.",
         "", "| split | models | found | median ratio | worst ratio |", "|---|---|---|---|---|"]
    figures = {}
    for split in ("tune", "test"):
        sel = [x for x in rows if x["split"] == split]
        if not sel:
            continue
        found = sum(x["ratio"] <= RECOVERY_FACTOR for x in sel)
        figures[split] = {"models": len(sel), "found": found, "median_ratio": float(np.median([x["ratio"] for x in sel]))}
        L.append(f"| {split} | {len(sel)} | {pct(found, len(sel))} | {np.median([x['ratio'] for x in sel]):.2f} | "
                 f"{max(x['ratio'] for x in sel):.2f} |")
    missed = [x for x in rows if x["ratio"] > RECOVERY_FACTOR]
    if missed:
        L += ["", "Not found: " + ", ".join(f"{x['id']} ({x['arch']}, {x['reversed_l1']:.0f} against {x['real_l1']:.0f})"
                                            for x in missed) + "."]
    L.append("")
    return {"lines": L, "figures": {**figures, "models": rows}}


TEST_ROWS = ("nc", "noise", "mmbd", "combined")
ARCH_GROUPS = {"all": None, "paper-shaped": ("paper",), "MLP": ("mlp",),
               "batch-norm, global pooling": ("bn_gap", "small_resnet")}


def test_outcome(r: dict, test: str) -> dict[str, Any] | None:
    """One test's (or the combination's) outcome on one model: its score (−log10 p), whether it flags the model,
    whether the true target is what it flags, and whether it says inconclusive; None when it did not run."""
    scan = r["scan"]
    if test == "combined":
        c = scan.get("combined")
        if not c:
            return None
        return {"score": c["score"], "flags": c["verdict"] == "infected",
                "target": r["true_target"] in c["flagged"], "inconclusive": c["verdict"] == "inconclusive"}
    e = (scan.get("detectors") or {}).get(test)
    if not e or e.get("p_value") is None:
        return None
    flags = Evidence.from_dict(e).flagged
    return {"score": -math.log10(max(e["p_value"], 1e-300)), "flags": flags,
            "target": flags and e["candidate"] == r["true_target"], "inconclusive": False}


def tests_table(scanned: list[dict]) -> dict[str, Any]:
    """Each test alone and the combined verdict, per split and architecture group: AUROC, infected models
    flagged with their true target named, clean models flagged, and inconclusive verdicts."""
    if not any(r["scan"].get("detectors") for r in scanned):
        return {"lines": [], "figures": {}}
    figures: dict[str, Any] = {}
    L = ["## Each test and the combined verdict", "",
         "Each test alone flags a model when its p-value is at most its own level; the combined verdict is the "
         "scan's (neuralcleanse.detection.combined). Target: infected models flagged with their true target named. "
         "False alarms: clean models flagged. Inconclusive verdicts count as misses on infected models.", "",
         "| split | architecture | test | AUROC | target flagged | false alarms | inconclusive (infected / clean) |",
         "|---|---|---|---|---|---|---|"]
    for split in ("tune", "test"):
        for group, archs in ARCH_GROUPS.items():
            rows = [r for r in scanned if r["split"] == split and (archs is None or r["recipe"]["arch"] in archs)]
            for test in TEST_ROWS:
                out = [(r, test_outcome(r, test)) for r in rows]
                out = [(r, o) for r, o in out if o is not None]
                bad = [(r, o) for r, o in out if r["true_target"] is not None]
                clean = [(r, o) for r, o in out if r["true_target"] is None]
                if not out:
                    continue
                e = {"auroc": auroc([o["score"] for _, o in bad], [o["score"] for _, o in clean]),
                     "n_infected": len(bad), "n_clean": len(clean),
                     "target_flagged": sum(o["target"] for _, o in bad), "false_alarms": sum(o["flags"] for _, o in clean),
                     "inconclusive_infected": sum(o["inconclusive"] for _, o in bad),
                     "inconclusive_clean": sum(o["inconclusive"] for _, o in clean)}
                figures.setdefault(split, {}).setdefault(group, {})[test] = e
                inc = (f"{e['inconclusive_infected']} / {e['inconclusive_clean']}" if test == "combined" else "–")
                L.append(f"| {split} | {group} | {test} | {fmt_auc(e['auroc'])} | {pct(e['target_flagged'], len(bad))} "
                         f"| {pct(e['false_alarms'], len(clean))} | {inc} |")
    L.append("")
    return {"lines": L, "figures": figures}


def plots(dataset: str, scanned: list[dict], scored: dict, thresholds: dict, docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    names = [n for n in SCORES if n != "published_tuned"]
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    for ax, split in zip(axes, ("tune", "test")):
        rs = [r for r in scanned if r["split"] == split]
        for n in names:
            pos = [scored[r["id"]][n]["score"] for r in rs if r["true_target"] is not None]
            neg = [scored[r["id"]][n]["score"] for r in rs if r["true_target"] is None]
            if not pos or not neg:
                continue
            cuts = sorted(set(pos + neg), reverse=True)
            fpr, tpr = [0.0], [0.0]
            for c in cuts:
                fpr.append(sum(v >= c for v in neg) / len(neg))
                tpr.append(sum(v >= c for v in pos) / len(pos))
            fpr.append(1.0)
            tpr.append(1.0)
            ax.plot(fpr, tpr, color=colours[n], label=f"{n} (AUROC {auroc(pos, neg):.3f})", drawstyle="steps-post")
            t = thresholds[n]
            ax.plot([sum(v > t for v in neg) / len(neg)], [sum(v > t for v in pos) / len(pos)], "o",
                    color=colours[n])
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(f"{dataset.upper()} {split} split ({sum(r['true_target'] is None for r in rs)} clean, "
                     f"{sum(r['true_target'] is not None for r in rs)} infected)")
        ax.set_xlabel("false-alarm rate (clean models flagged)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("infected models flagged")
    fig.suptitle("ROC of the model scores; dots: each rule's threshold (published 2, default by label count, others chosen on tune)")
    fig.tight_layout()
    fig.savefig(docs / f"population_{dataset}_roc.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    axes = axes.flatten()
    for ax, n in zip(axes, names):
        clean = [scored[r["id"]][n]["score"] for r in scanned if r["true_target"] is None]
        bad = [scored[r["id"]][n]["score"] for r in scanned if r["true_target"] is not None]
        finite = [v for v in clean + bad if math.isfinite(v)]
        if not finite:
            continue
        cap = float(np.percentile(finite, 97))
        clip = lambda vs: [min(v, cap) for v in vs]  # noqa: E731
        bins = np.linspace(min(finite), cap, 25)
        ax.hist(clip(clean), bins=bins, alpha=0.6, label=f"clean ({len(clean)})")
        ax.hist(clip(bad), bins=bins, alpha=0.6, label=f"infected ({len(bad)})")
        ax.axvline(thresholds[n], color="black", ls="--", lw=1, label=f"threshold {fmt_t(thresholds[n])}")
        ax.set_title(n, fontsize=10)
        ax.legend(fontsize=7)
    # Last panel: the published index per architecture, each model a dot.
    ax = axes[len(names)] if len(names) < len(axes) else None
    if ax is not None:
        archs = sorted({r["recipe"]["arch"] for r in scanned})
        rng = np.random.default_rng(0)
        for k, infected in enumerate((False, True)):
            for j, a in enumerate(archs):
                vs = [scored[r["id"]]["published"]["score"] for r in scanned
                      if r["recipe"]["arch"] == a and (r["true_target"] is not None) == infected]
                xs = j + (k - 0.5) * 0.35 + rng.uniform(-0.08, 0.08, len(vs))
                ax.scatter(xs, vs, s=14, color=f"C{k}", alpha=0.8,
                           label=("infected" if infected else "clean") if j == 0 else None)
        ax.axhline(2.0, color="black", ls="--", lw=1)
        ax.set_xticks(range(len(archs)), archs)
        ax.set_title("published anomaly index by architecture", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"{dataset.upper()}: model scores, both splits (values past the 97th percentile piled into the last "
                 "bin; dashed: threshold)", fontsize=10)
    fig.tight_layout()
    fig.savefig(docs / f"population_{dataset}_scores.png", dpi=100)
    plt.close(fig)


def read_rows(path: Path) -> list[dict]:
    rows: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["id"]] = row
    return list(rows.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", choices=("mnist", "gtsrb", "cifar10"))
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--docs", type=Path, default=ROOT.parent / "docs")
    ap.add_argument("--max-false-alarms", type=float, default=0.05)
    args = ap.parse_args()
    datasets = args.dataset or [d for d in ("mnist", "gtsrb", "cifar10")
                                if (args.results / f"population_{d}.jsonl").exists()]
    for ds in datasets:
        path = args.results / f"population_{ds}.jsonl"
        if not path.exists():
            print(f"{path}: no such file")
            continue
        s = report(ds, read_rows(path), args.results / f"population_{ds}.md", args.docs, args.max_false_alarms)
        print(f"{ds}: {s['n_scanned']} scanned, {s['n_dropped']} dropped -> {args.results / f'population_{ds}.md'}")
        for split in ("tune", "test"):
            for n, e in s["overall"][split].items():
                print(f"  {split:<4} {n:<16} t={fmt_t(e['threshold']):<7} AUROC {fmt_auc(e['auroc'])}  "
                      f"target flagged {pct(e['target_flagged'], e['n_infected']):<14} "
                      f"false alarms {pct(e['fp'], e['n_clean'])}")


if __name__ == "__main__":
    main()
