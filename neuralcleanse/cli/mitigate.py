"""`neuralcleanse mitigate`: remove or block a backdoor that a scan found."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import click

from neuralcleanse.cli.app import EXIT_CLEAN, guard, main
from neuralcleanse.cli.options import preprocessing_options, with_options
from neuralcleanse.errors import InputError
from neuralcleanse.files import run_folder_lock
from neuralcleanse.mitigation.input_filter import InputFilter
from neuralcleanse.mitigation.runner import DEFAULT_METHOD, METHODS, RUN_PARAMETERS
from neuralcleanse.options import (PREPROCESSING_FLAGS, load_model_and_data_from_flags, parse_device, parse_ints,
                                   parse_params)
from neuralcleanse.report.html_report import write_html_report


def _default(cls: type, name: str) -> Any:
    """A parameter's default in the Python API, so that help text and API never disagree."""
    return inspect.signature(cls).parameters[name].default


# Library messages name the methods' parameters; here they are given as -p KEY=VALUE.
PARAM_FLAGS = {name: f"-p {name}" for cls in METHODS.values() for name in inspect.signature(cls).parameters
               if name not in RUN_PARAMETERS}
PARAM_FLAGS["false_positive_rate"] = "--fpr"


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--scan", "scan_dir", required=True, type=click.Path(file_okay=False),
              help="The --out folder of a scan of this model.")
@click.option("--data", "data_source", required=True,
              help="Clean labelled images: mnist, gtsrb, cifar10, an .npz file or a dataset folder (at least 1,000 "
                   "images; half tune the repair, half measure it).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the results.")
@click.option("--method", type=click.Choice(list(METHODS)), default=DEFAULT_METHOD, show_default=True,
              help="unlearn: fine-tune the backdoor away; filter: flag triggered inputs, model unchanged; "
                   "prune: silence the units the trigger excites.")
@click.option("--labels", default=None, help="Treat these labels, e.g. 3,7 (default: the scan's flagged labels).")
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help=f"filter: share of clean inputs flagged (default {_default(InputFilter, 'false_positive_rate')}).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter of the method's Python object (Unlearner, InputFilter, NeuronPruner), e.g. "
                   "-p steps=600 -p recipe=paper -p layer=fc1; repeat for more (docs/mitigation.md lists them).")
@click.option("--baselines", is_flag=True, default=False,
              help="unlearn: also fine-tune with no trigger (and with the real one, when the model file "
                   "records it), to compare.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Scan the patched model's treated labels again (beside 10 others) and say whether the backdoor "
                   "is gone by that scan, not by the reversed trigger's figures.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace a finished mitigation already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print mitigation.json on stdout (messages go to stderr).")
@click.option("--device", default="cpu", show_default=True)
@with_options(preprocessing_options)
@click.pass_context
@guard(PREPROCESSING_FLAGS | PARAM_FLAGS)
def mitigate(ctx: click.Context, model_path: str, scan_dir: str, data_source: str, out: str, method: str,
             labels: str | None, fpr: float | None, params: tuple[str, ...], baselines: bool, verify: bool, seed: int,
             force: bool, as_json: bool, device: str, **model_flags: Any) -> int:
    """Remove or block a backdoor found by `scan`: unlearning (default), an input filter or neuron pruning.

    Writes OUT/mitigation.json (clean accuracy and attack success before and after, and a rescan of the
    patched model), a chart, the patched model in the form it came in, and OUT/report.html. Exit code 0
    when done, 2 for bad input (including a scan with no flagged label).
    """
    from neuralcleanse.mitigation import make_method, mitigate as run_mitigation, reversed_backdoors
    from neuralcleanse.report.html_report import read_run_folder
    from neuralcleanse.report.mitigation_report import MITIGATION_NAME, write_mitigation_report
    from neuralcleanse.report.scan_report import load_scan

    def refuse_finished() -> None:
        if (Path(out) / MITIGATION_NAME).exists() and not force:
            raise InputError(f"{Path(out) / MITIGATION_NAME} already holds a finished mitigation; "
                             "choose another --out or add --force to replace it")

    settings = parse_params(params)
    if fpr is not None:
        if method != "filter":
            raise InputError(f"--fpr sets the input filter's false-positive rate; it means nothing to --method {method}")
        settings["false_positive_rate"] = fpr
    chosen = make_method(method, settings, seed=seed, device=parse_device(device), progress=ctx.obj["progress"])
    refuse_finished()
    scan_result, scan_report = load_scan(scan_dir)
    read_run_folder(Path(scan_dir))  # everything the page will show: a damaged file must cost no work
    model, data = load_model_and_data_from_flags(model_path, data_source, **model_flags)
    if scan_result.masks.shape[-2:] != tuple(model.input_shape[1:]):
        raise InputError(f"the scan in {scan_dir} was made for {tuple(scan_result.masks.shape[-2:])} images, "
                         f"not this model's {tuple(model.input_shape[1:])}")
    treated = parse_ints(labels) if labels else None
    reversed_backdoors(scan_result, treated)  # nothing to treat: say so, write nothing
    with run_folder_lock(out):
        refuse_finished()  # again, under the lock: another run may have finished there meanwhile
        if force:  # inputs are good: the old results go now, so a failure below cannot leave them beside new files
            (Path(out) / MITIGATION_NAME).unlink(missing_ok=True)
        try:
            # A model this tool infected records its real trigger: the repair is then judged by it.
            outcome = run_mitigation(model, scan_result, data, chosen, labels=treated, baselines=baselines,
                                     verify=verify)
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
