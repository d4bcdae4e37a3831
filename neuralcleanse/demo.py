"""The demo: a real backdoor caught and removed end to end on real MNIST, in a few minutes on a laptop CPU."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from neuralcleanse.attacks.badnets import BadNets
from neuralcleanse.data.trigger import patch_trigger
from neuralcleanse.data.mnist import load_mnist
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.mitigation import Unlearner, mitigate
from neuralcleanse.models.formats.checkpoint import save_checkpoint
from neuralcleanse.pipeline import run_scan
from neuralcleanse.report.html_report import write_html_report
from neuralcleanse.report.mitigation_report import write_mitigation_report
from neuralcleanse.training import DEFAULTS, train_model

TARGET = 7


def run_demo(out: str | Path, *, device: torch.device | str = "cpu", epochs: int = 3, progress: bool = True,
             echo: Callable[[str], None] = print) -> dict:
    out = Path(out)
    data = load_mnist()
    echo(f"[1/4] training a BadNets MNIST model: 4x4 white square, bottom-right, target {TARGET}, 10% poison")
    trigger = patch_trigger(data.train.input_shape, size=4, position="bottom-right", colour=1.0)
    model, report = train_model(data, "mnist", badnets=BadNets([trigger], [TARGET], 0.1), epochs=epochs,
                                lr=DEFAULTS["mnist"]["lr"], device=device, progress=progress)
    ckpt = save_checkpoint(model, out / "model.pt")
    echo(f"      clean accuracy {report.clean_accuracy:.2%}, attack success {report.attack_success[0]:.2%}"
         f" -> {ckpt}")
    echo("[2/4] scanning every label for a backdoor (preset fast)")
    result = run_scan(model, data.test, out / "scan", NeuralCleanse(device=device, progress=progress),
                      model_desc={"path": str(ckpt)}, data_desc={"source": "mnist"})
    verdict = result.verdict.upper() if result.infected else result.verdict
    echo(f"      verdict: {verdict}; flagged {result.flagged}; anomaly index {result.anomaly_index:.2f}; "
         f"{result.wall_time:.1f}s")
    echo("      reversed trigger norms: " + ", ".join(f"{l}:{v:.0f}" for l, v in zip(result.labels, result.l1_norms)))
    summary = {"training": report.to_dict(), "scan": result.to_dict()}
    if result.infected:
        echo("[3/4] unlearning the backdoor: fine-tune with the reversed trigger on clean images, true labels kept")
        outcome = mitigate(model, result, data, Unlearner(device=device))  # judged by the trigger it records
        write_mitigation_report(outcome, out / "scan" / "unlearn", model={"path": str(ckpt)},
                                scan_dir=str(out / "scan"), data={"source": "mnist"})
        b, a = outcome.before, outcome.after
        echo(f"      clean accuracy {b.clean_accuracy:.2%} -> {a.clean_accuracy:.2%}; attack success (real trigger) "
             f"{b.worst_attack_success:.2%} -> {a.worst_attack_success:.2%}; patched model "
             f"{out / 'scan' / 'unlearn' / 'model.pt'}")
        if outcome.rescan is not None:
            echo(f"      rescan of the patched model: {outcome.rescan.summary()}: {outcome.verdict}")
        summary["mitigation"] = outcome.to_dict()
    else:
        echo("[3/4] nothing flagged, nothing to mitigate")
    page = write_html_report(out / "scan")
    echo(f"[4/4] report: {page} (open it in a browser; data in {out / 'scan' / 'report.json'})")
    return summary
