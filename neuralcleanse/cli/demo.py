"""`neuralcleanse demo`: train, scan and report on a BadNets MNIST model in one go."""
from __future__ import annotations

import click

from neuralcleanse.cli.app import EXIT_CLEAN, guard, main
from neuralcleanse.options import parse_device


@main.command()
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="cpu", show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.pass_context
@guard()
def demo(ctx: click.Context, out: str, device: str, epochs: int) -> int:
    """Train a BadNets MNIST model (4x4 white square, bottom-right, target 7), scan it, report."""
    from neuralcleanse.demo import run_demo

    run_demo(out, device=parse_device(device), epochs=epochs, progress=ctx.obj["progress"], echo=click.echo)
    return EXIT_CLEAN
