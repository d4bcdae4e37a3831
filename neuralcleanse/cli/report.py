"""`neuralcleanse report`: the HTML page of a scan or mitigation folder."""
from __future__ import annotations

import click

from neuralcleanse.cli.app import EXIT_CLEAN, guard, main
from neuralcleanse.report.html_report import write_html_report


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
    click.echo(f"page: {write_html_report(run_dir, out, mitigations=mitigations)}")
    return EXIT_CLEAN
