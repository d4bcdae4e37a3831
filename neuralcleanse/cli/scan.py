"""`neuralcleanse scan`: reverse-engineer every label's trigger and give a verdict."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from neuralcleanse.cli.app import EXIT_CLEAN, EXIT_INCONCLUSIVE, EXIT_INFECTED, guard, main
from neuralcleanse.detection.rules import DEFAULT_RULE, RULES
from neuralcleanse.detection.scanner import DEFAULT_DETECTORS
from neuralcleanse.cli.options import preprocessing_options, with_options
from neuralcleanse.options import PREPROCESSING_FLAGS, load_model_and_data_from_flags, parse_device, parse_ints
from neuralcleanse.report.html_report import write_html_report
from neuralcleanse.errors import InputError


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--data", "data_source", required=True, help="mnist, gtsrb, cifar10, an .npz file or a dataset folder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the report.")
@click.option("--preset", type=click.Choice(["fast", "original"]), default="fast", show_default=True)
@click.option("--samples", type=click.IntRange(min=10), default=None,
              help="Clean samples to optimise with (default 1000).")
@click.option("--labels", default=None, help="Only these labels, e.g. 0,3,7 (outlier analysis needs ≥3).")
@click.option("--loss", type=click.Choice(["cross_entropy", "original"]), default=None, hidden=True,
              help="original = the published code's swapped cross-entropy (kept for study; docs/presets.md).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Override the preset's step budget per label.")
@click.option("--rule", type=click.Choice(sorted(RULES)), default=DEFAULT_RULE, show_default=True,
              help="How the norms become a verdict (docs/results.md compares them); published = the paper's.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Anomaly index that flags a label (default: the rule's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--block-size", type=click.IntRange(min=1), default=None,
              help="Labels optimised per pass (default: chosen from the hardware). Fix it for bit-for-bit repeats.")
@click.option("--schedule", type=click.Choice(["auto", "full", "coarse-to-fine"]), default="auto", show_default=True,
              help="coarse-to-fine: a short pass over every label, the full budget for the smallest and a random "
                   "reference; auto picks it from 200 labels on (docs/scale.md).")
@click.option("--restarts", type=click.IntRange(min=0), default=4, show_default=True,
              help="When the anomaly index lies within 1 of the threshold, scan again with this many more seeds "
                   "and report the seed whose index is the median (0: never).")
@click.option("--confirm", type=click.Choice(["original"]), default=None, hidden=True,
              help="When the anomaly index lies within 1 of the threshold, scan again with this preset and report "
                   "that scan instead of restarting (kept for study, not recommended; docs/presets.md).")
@click.option("--detectors", default=",".join(DEFAULT_DETECTORS), show_default=True,
              help="The tests, comma-separated: nc (Neural Cleanse, always), noise (neuron noise), mmbd (maximum "
                   "margin); one verdict from all (docs/results.md measures each). nc alone: the paper's scan.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the labels across this many local processes (one model, merged into one result).")
@click.option("--ray", "ray_address", default=None, metavar="auto|ADDRESS",
              help="Split the labels across Ray tasks on this cluster (needs Ray: pip install 'ray>=2.52,<3'; docs/scale.md).")
@click.option("--resume", is_flag=True, help="Go on with an interrupted scan in --out (same command otherwise).")
@click.option("--force", is_flag=True, help="Replace a finished or interrupted scan in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout (messages go to stderr).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: the model's forward pass under autocast (for GPUs; slow on most CPUs).")
@with_options(preprocessing_options)
@click.pass_context
@guard(PREPROCESSING_FLAGS)
def scan(ctx: click.Context, model_path: str, data_source: str, out: str, preset: str, samples: int | None,
         labels: str | None, loss: str | None, max_steps: int | None, rule: str, threshold: float | None, seed: int,
         block_size: int | None, schedule: str, restarts: int, confirm: str | None, detectors: str, workers: int, ray_address: str | None, resume: bool, force: bool,
         as_json: bool, device: str, precision: str, **model_flags: Any) -> int:
    """Reverse-engineer a trigger for every label and flag the outliers.

    Exit code 0: no label flagged; 3: infected (at least one label flagged); 4: inconclusive (every
    label is easy to reach, so mask size cannot single out a backdoor); 2: bad input; 1: crash.
    """
    from neuralcleanse.detection import NeuralCleanse
    from neuralcleanse.pipeline import scan_folder
    from neuralcleanse.report.html_report import read_run_folder

    if resume and force:
        raise InputError("--resume and --force contradict each other: resume keeps the run in --out, force replaces it")
    label_list = parse_ints(labels) if labels else None
    scanner = NeuralCleanse(preset, samples=samples, rule=rule, threshold=threshold, device=parse_device(device),
                            seed=seed, block_size=block_size, precision=precision, progress=ctx.obj["progress"],
                            schedule=schedule, restarts=restarts, confirm=confirm,
                            detectors=[d.strip() for d in detectors.split(",") if d.strip()],
                            workers=max(workers, 2) if ray_address and workers == 1 else workers, ray=ray_address,
                            **config_overrides(loss=loss, max_steps=max_steps))
    result, finished = scan_folder(
        out, lambda: load_model_and_data_from_flags(model_path, data_source, **model_flags), scanner,
        labels=label_list, resume=resume, force=force, model_desc={"path": str(model_path)},
        data_desc={"source": data_source})
    if finished is not None:
        read_run_folder(Path(out))  # what the page shows, checked before anything is printed
        click.echo(f"{Path(out) / 'report.json'} is a finished scan: nothing to resume", err=True)
    _print_verdict(result, out, as_json, finished)
    return _exit_code(result)


def config_overrides(**values: Any) -> dict[str, Any]:
    """The ReverseConfig settings a flag gave (None: the preset's)."""
    return {k: v for k, v in values.items() if v is not None}


def _exit_code(result: Any) -> int:
    return {"infected": EXIT_INFECTED, "inconclusive": EXIT_INCONCLUSIVE}.get(result.verdict, EXIT_CLEAN)


def _print_verdict(result: Any, out: str, as_json: bool = False, report: dict | None = None) -> None:
    """The verdict for people; with --json they go to stderr and stdout carries report.json."""
    idx = result.anomaly_index
    idx_text = "inf" if idx == float("inf") else f"{idx:.2f}"
    if result.combined is not None:
        word = {"infected": "INFECTED", "inconclusive": "INCONCLUSIVE"}.get(result.verdict, "clean")
        flagged = f" — flagged label(s) {result.flagged}" if result.flagged else ""
        click.echo(f"verdict: {word}{flagged}: {result.combined.reason} (score {result.score:.2f}; Neural Cleanse's "
                   f"anomaly index {idx_text})", err=as_json)
        for name, e in result.evidence.items():
            said = f"label {e.candidate}, p-value {e.p_value:.2g}" if e.ran else f"did not run: {e.note}"
            click.echo(f"  {name}: {said}", err=as_json)
    elif result.verdict == "inconclusive":
        click.echo(f"verdict: INCONCLUSIVE — every label's reversed trigger is small (median L1 norm "
                   f"{float(np.median(result.l1_norms)):.1f}), so trigger size cannot single out a backdoor "
                   f"(smallest-norm anomaly index {idx_text}, rule {result.rule.name})", err=as_json)
    elif result.infected:
        click.echo(f"verdict: INFECTED — flagged label(s) {result.flagged}, anomaly index {idx_text}", err=as_json)
    else:
        click.echo(f"verdict: clean — no label flagged (anomaly index of the smallest norm {idx_text})", err=as_json)
    unreached = [label for label, ok in zip(result.labels, result.reached_threshold) if not ok]
    if unreached:
        # Such a label's norm is the best mask found, not a trigger: a large norm there is a failed search.
        click.echo(f"warning: the trigger search for label(s) {unreached} never reached the attack threshold; their "
                   "norms are of the best masks found, not of triggers (report.json `reached_threshold`; the page "
                   "marks them)", err=True)
    click.echo(f"report: {Path(out) / 'report.json'}; page: {write_html_report(out)}", err=as_json)
    if as_json:
        click.echo(json.dumps(report or json.loads((Path(out) / "report.json").read_text()), indent=2))
