"""`neuralcleanse mitigate`: remove or block a backdoor that a scan found."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from neuralcleanse.cli.app import EXIT_CLEAN, guard, main
from neuralcleanse.cli.options import preprocessing_options, with_options
from neuralcleanse.options import PREPROCESSING_FLAGS, load_model_and_data_from_flags, parse_device, parse_floats, parse_ints, parse_position
from neuralcleanse.report.html_report import write_html_report
from neuralcleanse.errors import InputError
from neuralcleanse.files import run_folder_lock

# The arguments of real_backdoors that the --real-* options set.
REAL_TRIGGER_FLAGS = {
    "target": "--real-target", "size": "--real-size", "position": "--real-position", "colour": "--real-colour",
    "mask_path": "--real-mask", "pattern_path": "--real-pattern",
}


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--scan", "scan_dir", required=True, type=click.Path(file_okay=False),
              help="The --out folder of a scan of this model.")
@click.option("--data", "data_source", required=True, help="mnist, gtsrb, an .npz file or a dataset folder.")
@click.option("--method", required=True, type=click.Choice(["filter", "prune", "unlearn"]))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the results.")
@click.option("--labels", default=None, help="Treat these labels (default: the scan's flagged labels).")
@click.option("--layer", default=None,
              help="Feature layer for filter/prune (default: input of the last dense layer); see the error for names.")
@click.option("--top-fraction", type=float, default=None,
              help="filter: share of top units scored. [default: every unit the trigger raises (at most 1,024) "
                   "for lda, 0.1 for weighted, 0.01 for z and mean]")
@click.option("--fpr", type=float, default=0.05, show_default=True, help="filter: false-positive rate on clean data.")
@click.option("--filter-score", type=click.Choice(["lda", "weighted", "z", "mean"]), default="lda", show_default=True,
              help="filter: lda = Fisher's linear discriminant of stamped against clean inputs over the units "
                   "the trigger raises (default since 0.7); weighted = units' z-values weighted by how far the "
                   "trigger moves them (0.6); z = their plain mean (0.5); mean = their mean activation, as published.")
@click.option("--step", type=float, default=0.02, show_default=True, help="prune: share of the layer per step.")
@click.option("--stop-success", type=float, default=0.05, show_default=True,
              help="prune: stop once the reversed trigger succeeds less often than this.")
@click.option("--max-fraction", type=float, default=1.0, show_default=True, help="prune: never prune more.")
@click.option("--recipe", type=click.Choice(["sized", "paper"]), default="sized", show_default=True,
              help="unlearn: sized = all the clean data, a budget of steps, jittered trigger, searched rate; "
                   "paper = one epoch on 10% of it at the model's training rate (docs/mitigation.md).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="unlearn (sized): optimiser steps of 64 images.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="unlearn: fine-tuning epochs instead of a step budget (paper: 1).")
@click.option("--trigger-share", type=float, default=0.2, show_default=True,
              help="unlearn: share of the fine-tuning images that carry the reversed trigger.")
@click.option("--data-fraction", type=float, default=None,
              help="unlearn: share of the tuning data fine-tuned on (default: all; paper: 0.1).")
@click.option("--lr", type=float, default=None,
              help="unlearn: Adam learning rate (default: searched (sized); the model's training rate or 1e-3 (paper)).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="unlearn (sized): up to this many rounds; between rounds the treated labels are reverse-engineered "
                   "afresh on the tuning data and unlearned again while the rescan still flags them (docs/mitigation.md).")
@click.option("--min-rounds", type=click.IntRange(min=1), default=None,
              help="unlearn (sized): run at least this many of the rounds, each with the treated labels' fresh reversed "
                   "triggers, flagged or not (at most --rounds; 1: only while the rescan flags them). "
                   "[default: 3, or --rounds if fewer]")
@click.option("--accuracy-tolerance", type=click.FloatRange(0, 1, max_open=True), default=0.02, show_default=True,
              help="unlearn (sized): clean accuracy the learning-rate search may give up on its held-back fifth "
                   "(0.01 before 0.5).")
@click.option("--distill", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="unlearn (sized): weight of the term that teaches each input, stamped or not, to answer as the "
                   "model given answers the plain image (0: cross-entropy on the labels only).")
@click.option("--mixup", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="unlearn (sized): share of each batch mixed with another image for the distillation term "
                   "(function matching); costs less accuracy, removes less (docs/mitigation.md, \"Session 12\").")
@click.option("--roam", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="unlearn (sized): share of the stamps moved anywhere in the image instead of near the reversed "
                   "trigger's place (for global-pooling networks); measured, not the default "
                   "(docs/mitigation.md, \"Session 14\").")
@click.option("--adversarial", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="unlearn (sized): share of each batch stamped with triggers re-found for the treated labels on the "
                   "model being trained (adversarial unlearning), beside the reversed ones; the learning-rate "
                   "search then scores rates by a re-found trigger too (docs/mitigation.md, \"Session 15\").")
@click.option("--refresh", type=click.IntRange(min=1), default=10, show_default=True,
              help="unlearn (sized, --adversarial): optimiser steps between re-finding the triggers.")
@click.option("--adversarial-gate", type=click.FloatRange(0, 1), default=None,
              help="unlearn (sized, --adversarial): stamp re-found triggers only in a round after the plain ones, "
                   "run when a trigger re-found on the patched model still succeeds on at least this share of the "
                   "tuning images (docs/mitigation.md, \"Session 16\").")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="unlearn: also fine-tune with no trigger and with the real trigger (when known).")
@click.option("--real-target", type=int, default=None, help="Label of the real backdoor, to measure against.")
@click.option("--real-size", type=int, default=None, help="Real trigger as a square patch of this side...")
@click.option("--real-position", default="bottom-right", show_default=True, help="...at this position...")
@click.option("--real-colour", default="1.0", show_default=True, help="...in this colour.")
@click.option("--real-mask", type=click.Path(dir_okay=False), default=None, help="Real trigger's mask image.")
@click.option("--real-pattern", type=click.Path(dir_okay=False), default=None, help="Real trigger's pattern image.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Scan the patched model's treated labels again (beside 10 others) and say whether the backdoor "
                   "is gone by that scan, not by the reversed trigger's figures.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace a finished mitigation already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print mitigation.json on stdout (messages go to stderr).")
@click.option("--device", default="cpu", show_default=True)
@with_options(preprocessing_options)
@click.pass_context
@guard(PREPROCESSING_FLAGS | REAL_TRIGGER_FLAGS)
def mitigate(ctx: click.Context, model_path: str, scan_dir: str, data_source: str, method: str, out: str,
             labels: str | None, layer: str | None, top_fraction: float | None, fpr: float, filter_score: str, step: float,
             stop_success: float, max_fraction: float, recipe: str, steps: int, epochs: int | None,
             trigger_share: float, data_fraction: float | None,
             lr: float | None, rounds: int, min_rounds: int | None, accuracy_tolerance: float, distill: float,
             mixup: float, roam: float, adversarial: float, refresh: int,
             adversarial_gate: float | None, baselines: bool, real_target: int | None,
             real_size: int | None, real_position: str,
             real_colour: str, real_mask: str | None, real_pattern: str | None, verify: bool, seed: int, force: bool,
             as_json: bool, device: str, **model_flags: Any) -> int:
    """Remove or block a backdoor found by `scan`: input filter, neuron pruning or unlearning.

    Writes OUT/mitigation.json (clean accuracy and attack success before and after), a chart and
    the patched model. Exit code 0 when done, 2 for bad input (including a scan with no flagged label).
    """
    from neuralcleanse.attacks.trigger_files import real_backdoors
    from neuralcleanse.mitigation.backdoors import reversed_backdoors
    from neuralcleanse.mitigation.runner import mitigate as run_mitigation
    from neuralcleanse.report.mitigation_report import MITIGATION_NAME, write_mitigation_report
    from neuralcleanse.report.html_report import read_run_folder
    from neuralcleanse.report.scan_report import load_scan

    def refuse_finished() -> None:
        if (Path(out) / MITIGATION_NAME).exists() and not force:
            raise InputError(f"{Path(out) / MITIGATION_NAME} already holds a finished mitigation; "
                             "choose another --out or add --force to replace it")

    if min_rounds is not None and min_rounds > rounds:
        raise InputError(f"--min-rounds {min_rounds} is more than --rounds {rounds}: the rounds run whatever the "
                         "rescan finds are part of --rounds")
    refuse_finished()
    scan_result, scan_report = load_scan(scan_dir)
    read_run_folder(Path(scan_dir))  # everything the page will show: a damaged file must cost no work
    model, data = load_model_and_data_from_flags(model_path, data_source, **model_flags)
    if scan_result.masks.shape[-2:] != tuple(model.input_shape[1:]):
        raise InputError(f"the scan in {scan_dir} was made for {tuple(scan_result.masks.shape[-2:])} images, "
                         f"not this model's {tuple(model.input_shape[1:])}")
    # Position and colour describe a patch only: without --real-size nothing reads them, so a bad one is no
    # error. The message says --trigger-position, as this command's has so far (--real-position would be exact).
    patch = ({"position": parse_position(real_position, "--trigger-position"), "colour": parse_floats(real_colour)}
             if real_size is not None else {})
    real = real_backdoors(model, real_target, size=real_size, mask_path=real_mask, pattern_path=real_pattern, **patch)
    reversed_backdoors(scan_result, parse_ints(labels) if labels else None)  # nothing to treat: say so, write nothing
    with run_folder_lock(out):
        refuse_finished()  # again, under the lock: another run may have finished there meanwhile
        if force:  # inputs are good: the old results go now, so a failure below cannot leave them beside new files
            (Path(out) / MITIGATION_NAME).unlink(missing_ok=True)
        try:
            outcome = run_mitigation(
                model, scan_result, data, method, labels=parse_ints(labels) if labels else None, real=real,
                layer=layer, top_fraction=top_fraction, false_positive_rate=fpr, filter_score=filter_score,
                prune_step=step,
                stop_success=stop_success, max_fraction=max_fraction, recipe=recipe, steps=steps, epochs=epochs,
                trigger_share=trigger_share, data_fraction=data_fraction or (0.1 if recipe == "paper" else 1.0), lr=lr,
                rounds=rounds, min_rounds=min_rounds, accuracy_tolerance=accuracy_tolerance,
                distill=distill, mixup=mixup, roam=roam, adversarial=adversarial, refresh=refresh,
                adversarial_gate=adversarial_gate,
                baselines=baselines, seed=seed, verify=verify, device=parse_device(device),
                progress=ctx.obj["progress"])
        except ValueError as exc:
            raise InputError(str(exc)) from None
        path = write_mitigation_report(outcome, out, model={"path": str(model_path), "source": model.info.source},
                                       scan_dir=str(scan_dir), data={"source": data_source})
        # One page with the scan and this mitigation, in the mitigation's folder.
        page = write_html_report(scan_dir, Path(out) / "report.html", mitigations=[out])
    _print_mitigation(outcome, path, as_json)
    click.echo(f"page: {page}", err=as_json)
    if as_json:
        click.echo(path.read_text().rstrip())
    return EXIT_CLEAN


def _print_mitigation(outcome: Any, path: Path, as_json: bool = False) -> None:
    echo = functools.partial(click.echo, err=as_json)
    b, a = outcome.before, outcome.after
    echo(f"{outcome.method} on label(s) {outcome.labels}: clean accuracy {b.clean_accuracy:.2%} -> "
         f"{a.clean_accuracy:.2%}; attack success ({outcome.attack_trigger} trigger) "
         f"{b.worst_attack_success:.2%} -> {a.worst_attack_success:.2%}")
    if outcome.filter_rates is not None:
        r = outcome.filter_rates
        echo(f"filter: false-positive rate {r.false_positive_rate:.2%}, false-negative rate "
             f"{r.false_negative_rate:.2%}")
    if outcome.pruning is not None:
        echo(f"pruned {outcome.pruning.fraction:.0%} of layer {outcome.pruning.layer.name}")
    for name, m in outcome.baselines.items():
        echo(f"baseline {name}: clean accuracy {m.clean_accuracy:.2%}, attack success {m.worst_attack_success:.2%}")
    if outcome.rescan is not None:
        r = outcome.rescan
        echo(f"rescan of the patched model ({len(r.labels)} labels, rule {r.rule}): {r.summary()}")
    echo(f"verdict: {outcome.verdict}")
    echo(f"results: {path}")
