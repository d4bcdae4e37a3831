"""`neuralcleanse report`: the HTML page of a scan or mitigation folder."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click

from neuralcleanse.cli.app import EXIT_CLEAN, guard, main


def write_page(run_dir: str | Path, out: str | Path | None = None, mitigations: Sequence[str | Path] = ()) -> Path:
    """The page of `run_dir` (see write_html_report), which scan and mitigate also write."""
    from neuralcleanse.report.html_report import write_html_report

    return write_html_report(run_dir, out, mitigations=mitigations)


@main.command()
@click.argument("run_dir", metavar="DIR", type=click.Path())
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="HTML file to write (default: DIR/report.html).")
@click.option("--mitigation", "mitigations", multiple=True, type=click.Path(file_okay=False),
              help="Also show this mitigation folder (sub-folders of DIR holding mitigation.json are found anyway).")
@guard()
def report(run_dir: str, out: str | None, mitigations: tuple[str, ...]) -> int:
    """Write one self-contained HTML page for a scan (or mitigation) folder: verdict, anomaly index,
    norms chart, every label's reversed trigger, settings and mitigation results. Opens in any browser,
    offline."""
    click.echo(f"page: {write_page(run_dir, out, mitigations)}")
    return EXIT_CLEAN
