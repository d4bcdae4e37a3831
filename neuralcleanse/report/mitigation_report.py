"""A mitigation's results on disk: mitigation.json, its chart, and the patched model."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.mitigation.base import MitigationResult
from neuralcleanse.models.formats import save_like
from neuralcleanse.files import write_json
from neuralcleanse.report.images import pyplot, save_figure
from neuralcleanse.report.scan_report import report_header

MITIGATION_NAME = "mitigation.json"
log = logging.getLogger(__name__)


def pruning_chart(outcome: MitigationResult, path: Path) -> Path:
    plt = pyplot()
    curve = outcome.pruning.curve
    x = [100 * s.fraction for s in curve]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    ax.plot(x, [100 * s.clean_accuracy for s in curve], "o-", color="#2ca02c", ms=3, label="clean accuracy")
    ax.plot(x, [100 * s.reversed_success for s in curve], "s-", color="#ff7f0e", ms=3,
            label="attack success, reversed trigger")
    if curve[0].attack_success is not None:
        ax.plot(x, [100 * s.attack_success for s in curve], "^-", color="#d62728", ms=3,
                label="attack success, real trigger")
    ax.axvline(100 * outcome.pruning.fraction, color="black", lw=1, ls="--", label="model kept")
    ax.set_xlabel(f"units pruned (% of layer {outcome.pruning.layer.name})")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.set_title("Neuron pruning")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return save_figure(fig, path)


def filter_chart(outcome: MitigationResult, path: Path) -> Path:
    plt = pyplot()
    rates = outcome.filter_rates
    clean, trig = rates.clean_scores.numpy(), rates.triggered_scores.numpy()
    bins = np.linspace(min(clean.min(), trig.min()), max(clean.max(), trig.max()), 60)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    ax.hist(clean, bins=bins, alpha=0.6, color="#1f77b4", label=f"clean (FPR {rates.false_positive_rate:.1%})")
    ax.hist(trig, bins=bins, alpha=0.6, color="#d62728", label=f"with trigger (FNR {rates.false_negative_rate:.1%})")
    ax.axvline(outcome.filter.threshold_, color="black", lw=1, ls="--", label="threshold")
    ax.set_xlabel("mean activation of the top units")
    ax.set_ylabel("inputs (held out)")
    ax.set_title("Input filter scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def unlearning_chart(outcome: MitigationResult, path: Path) -> Path:
    plt = pyplot()
    rows = {"before": outcome.before, "unlearn (reversed trigger)": outcome.after}
    names = {"fine_tune_no_trigger": "fine-tune, no trigger", "unlearn_real_trigger": "unlearn (real trigger)"}
    rows.update({names.get(k, k): v for k, v in outcome.baselines.items()})
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    ax.bar(pos - 0.2, [100 * m.clean_accuracy for m in rows.values()], 0.4, color="#2ca02c", label="clean accuracy")
    ax.bar(pos + 0.2, [100 * m.worst_attack_success for m in rows.values()], 0.4, color="#d62728",
           label=f"attack success ({outcome.attack_trigger} trigger)")
    ax.set_xticks(pos, list(rows), fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("Unlearning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


CHARTS = {"prune": pruning_chart, "filter": filter_chart, "unlearn": unlearning_chart}


def write_mitigation_report(outcome: MitigationResult, out_dir: str | Path, *, model: dict[str, Any] | None = None,
                            scan_dir: str | None = None, data: dict[str, Any] | None = None) -> Path:
    """Writes the patched model first, then the chart, then mitigation.json (last, so its presence
    means the run finished)."""
    out = Path(out_dir)
    files: dict[str, str] = {}
    patched = outcome.model
    if patched is not None:
        patched = patched.cpu()
        if outcome.method == "filter" and patched.info.arch is not None:
            patched.info.metadata["input_filter"] = outcome.filter.to_dict()
        kind, name = save_like(patched, out)
        files[kind] = name
    files["chart"] = CHARTS[outcome.method](outcome, out / f"{outcome.method}.png").name
    report = {
        **report_header(),
        "model": model or {}, "scan": scan_dir, "data": data or {},
        **outcome.to_dict(),
        "files": files,
    }
    return write_json(out / MITIGATION_NAME, report)
