"""A mitigation's results on disk: mitigation.json, its chart, and the patched model."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralcleanse.mitigation.runner import MitigationOutcome
from neuralcleanse.models.checkpoint import save_checkpoint
from neuralcleanse.models.classifier import script_net
from neuralcleanse.models.exported import save_exported
from neuralcleanse.models.foreign import ChannelsLastInput
from neuralcleanse.files import write_atomic, write_json
from neuralcleanse.report.images import pyplot, save_figure
from neuralcleanse.report.scan_report import report_header

MITIGATION_NAME = "mitigation.json"
log = logging.getLogger(__name__)


def pruning_chart(outcome: MitigationOutcome, path: Path) -> Path:
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


def filter_chart(outcome: MitigationOutcome, path: Path) -> Path:
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


def unlearning_chart(outcome: MitigationOutcome, path: Path) -> Path:
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


def _export_onnx(model, net, path: Path) -> bool:
    """The patched network back to ONNX with the input convention it came with; False if it cannot be."""
    c, h, w = model.info.input_shape
    nhwc = isinstance(model.net, ChannelsLastInput)
    dummy = torch.zeros(1, h, w, c) if nhwc else torch.zeros(1, c, h, w)
    try:
        write_atomic(path, lambda tmp: torch.onnx.export(net.eval(), (dummy,), tmp, dynamo=False,
                                                         input_names=["input"], output_names=["logits"],
                                                         dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}))
        return True
    except Exception as exc:  # exporters fail in many ways; the weights are still written
        log.warning("could not export the patched model to ONNX (%s); writing its state_dict instead", exc)
        return False


def _export_program(model, path: Path) -> bool:
    """The patched network back to a torch.export program (.pt2) with the input it was loaded with;
    False if it cannot be."""
    try:
        write_atomic(path, lambda tmp: save_exported(model, tmp))
        return True
    except Exception as exc:  # export fails on code it cannot trace; the weights are still written
        log.warning("could not export the patched model with torch.export (%s); writing its state_dict instead",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False


CHARTS = {"prune": pruning_chart, "filter": filter_chart, "unlearn": unlearning_chart}


def write_mitigation_report(outcome: MitigationOutcome, out_dir: str | Path, *, model: dict[str, Any] | None = None,
                            scan_dir: str | None = None, data: dict[str, Any] | None = None) -> Path:
    """Writes the patched model first, then the chart, then mitigation.json (last, so its presence
    means the run finished)."""
    out = Path(out_dir)
    files: dict[str, str] = {}
    patched = outcome.model
    if patched is not None:
        patched = patched.cpu()
        if getattr(patched, "info", None) is not None and patched.info.arch is not None:
            if outcome.method == "filter":
                patched.info.metadata["input_filter"] = outcome.filter.to_dict()
            save_checkpoint(patched, out / "model.pt")
            files["checkpoint"] = "model.pt"
        elif script_net(patched) is not None:
            # Same input convention as the file the user gave: the network alone, preprocessing not baked in.
            write_atomic(out / "model.torchscript.pt", lambda tmp: torch.jit.save(script_net(patched), tmp))
            files["torchscript"] = "model.torchscript.pt"
        else:
            net = patched.net.net if isinstance(patched.net, ChannelsLastInput) else patched.net
            if patched.info.source == "onnx" and _export_onnx(patched, net, out / "model.onnx"):
                files["onnx"] = "model.onnx"
            elif patched.info.source == "exported" and _export_program(patched, out / "model.pt2"):
                files["exported"] = "model.pt2"
            else:
                # A network built by the user's factory or unpickled: its weights, in the network's own
                # naming (no layout adapter prefix), loadable with the same --factory.
                write_atomic(out / "model.state_dict.pt", lambda tmp: torch.save(net.state_dict(), tmp))
                files["state_dict"] = "model.state_dict.pt"
    files["chart"] = CHARTS[outcome.method](outcome, out / f"{outcome.method}.png").name
    report = {
        **report_header(),
        "model": model or {}, "scan": scan_dir, "data": data or {},
        **outcome.to_dict(),
        "files": files,
    }
    return write_json(out / MITIGATION_NAME, report)
