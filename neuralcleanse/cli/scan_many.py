"""`neuralcleanse scan-many`: scan a whole folder or manifest of models and summarise them."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import click

from neuralcleanse.cli.app import EXIT_BAD_INPUT, EXIT_CLEAN, EXIT_INFECTED, guard, main
from neuralcleanse.cli.options import preprocessing_options, with_options
from neuralcleanse.options import PREPROCESSING_FLAGS
from neuralcleanse.cli.scan import scan as scan_command
from neuralcleanse.errors import InputError
from neuralcleanse.zoo.worker import LOAD_OPTIONS, SCAN_OPTIONS

# Options that make the tool run code (docs/security.md): the command line sets them for the whole
# batch, a manifest cannot.
COMMAND_LINE_ONLY = ("factory", "factory_kwargs", "trust_pickle")


@main.command("scan-many")
@click.argument("source", metavar="SOURCE", type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for the summary; each model's scan goes to OUT/models/NAME.")
@click.option("--data", "data_source", default=None,
              help="mnist, gtsrb, cifar10, an .npz file or a dataset folder, for every model (a manifest's data column "
                   "overrides it). Required for a folder.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Models scanned at once on this machine, each in its own process.")
@click.option("--ray", "ray_address", default=None, metavar="auto|ADDRESS",
              help="Scan on a Ray cluster: auto (run on a cluster node) or HEAD:6379. Needs "
                   "pip install 'ray>=2.52,<3' (or '.[ray]' in a checkout) and shared paths (docs/scale.md).")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
              help="PyTorch threads for each model being scanned (Ray reserves as many CPUs).")
@click.option("--resume", is_flag=True,
              help="Go on with an interrupted batch in --out: finished models are kept, failed ones tried again.")
@click.option("--force", is_flag=True, help="Replace the batch in --out and the scans in its model folders.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json on stdout (messages go to stderr).")
@with_options(preprocessing_options)
@click.pass_context
@guard({**PREPROCESSING_FLAGS, "ray_address": "--ray", "workers": "--workers"})
def scan_many(ctx: click.Context, source: str, out: str, data_source: str | None, workers: int,
              ray_address: str | None, threads_per_worker: int, resume: bool, force: bool, as_json: bool,
              **options: Any) -> int:
    """Scan every model in SOURCE and summarise: OUT/summary.csv, OUT/summary.json and OUT/index.html
    (most suspicious first, linking each model's own report page).

    SOURCE is a folder (each .pt, .pth, .pt2, .onnx or .safetensors file in it, sub-folders not
    searched) or a .csv/.jsonl manifest: a model column, plus any scan option as a column to set it
    for that row (docs/scale.md). A model that cannot be scanned is reported as an error and the
    others go on.

    Exit code 3: at least one model infected; 2: none infected but at least one could not be
    scanned (or the batch itself has bad input); 0: otherwise, including when some models are only
    inconclusive (they are listed at the end); 1: crash.
    """
    from neuralcleanse.zoo.manifest import read_jobs
    from neuralcleanse.zoo.runner import run_batch
    from neuralcleanse.zoo.worker import check_options

    if resume and force:
        raise InputError("--resume and --force contradict each other: resume keeps the batch in --out, force "
                         "replaces it")
    if ray_address and workers > 1:
        raise InputError("give --workers or --ray, not both: on Ray the cluster's CPUs decide how many models run "
                         "at once")
    if Path(source).is_dir() and not data_source:
        raise InputError(f"--data is required when SOURCE is a folder ({source})")
    jobs = read_jobs(source, out, {"data_source": data_source, **options}, manifest_columns(), COMMAND_LINE_ONLY)
    for job in jobs:
        try:
            check_options(job.options)
        except InputError as exc:
            raise InputError(f"{job.model}: {exc}") from None
    rows = run_batch(jobs, out, source=str(source), resume=resume, force=force, workers=workers,
                     ray_address=ray_address, threads=threads_per_worker, progress=ctx.obj["progress"])
    _print_summary(rows, out, as_json)
    return exit_code(rows)


def exit_code(rows: Sequence[dict[str, Any]]) -> int:
    verdicts = {row.get("verdict") for row in rows}
    if "infected" in verdicts:
        return EXIT_INFECTED
    return EXIT_BAD_INPUT if "error" in verdicts else EXIT_CLEAN


@functools.cache
def manifest_columns() -> dict[str, tuple[str, Any]]:
    """Manifest column → (option, converter), named after the option's flag: --num-classes is
    num_classes, --data is data. Cells are converted as click converts the flag's text."""
    columns = {}
    for param in scan_many.params:
        if isinstance(param, click.Option) and param.name in ("data_source", *LOAD_OPTIONS, *SCAN_OPTIONS):
            flag = max(param.opts, key=len)
            columns[flag.lstrip("-").replace("-", "_")] = (param.name, functools.partial(_convert, param))
    return columns


def _convert(param: click.Option, text: str) -> Any:
    try:
        return param.type.convert(text, param, None)
    except click.BadParameter as exc:
        raise InputError(exc.format_message()) from None


def _print_summary(rows: Sequence[dict[str, Any]], out: str, as_json: bool) -> None:
    from neuralcleanse.zoo.summary import INDEX_HTML, SUMMARY_CSV, SUMMARY_JSON, counts, suspicious_first

    tally = counts(rows)
    click.echo(f"{len(rows)} models: " + ", ".join(f"{n} {verdict}" for verdict, n in tally.items()), err=as_json)
    for row in suspicious_first(rows):
        if row["verdict"] == "infected":
            index = "inf" if row["anomaly_index"] is None else f"{row['anomaly_index']:.2f}"
            click.echo(f"  INFECTED      {row['model']}: label(s) {row['flagged']}, anomaly index {index}", err=as_json)
        elif row["verdict"] == "inconclusive":
            click.echo(f"  inconclusive  {row['model']}: trigger size cannot decide", err=as_json)
        elif row["verdict"] == "error":
            click.echo(f"  error         {row['model']}: {row['error']}", err=as_json)
    folder = Path(out)
    click.echo(f"summary: {folder / SUMMARY_CSV}, {folder / SUMMARY_JSON}; page: {folder / INDEX_HTML}", err=as_json)
    if as_json:
        click.echo(json.dumps(json.loads((folder / SUMMARY_JSON).read_text()), indent=2))


# scan's own options, taken from `scan` so that both commands take the same values with the same
# checks (and a manifest cell is checked as its flag would be).
scan_many.params += [p for p in scan_command.params if p.name in SCAN_OPTIONS]
