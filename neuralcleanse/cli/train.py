"""`neuralcleanse train`: a clean or BadNets-infected model."""
from __future__ import annotations

from pathlib import Path

import click

from neuralcleanse.cli.app import EXIT_CLEAN, guard, main
from neuralcleanse.cli.options import parse_device, parse_floats, parse_position, trigger_options, with_options
from neuralcleanse.errors import InputError


@main.command()
@click.option("--dataset", "dataset", required=True, help="mnist, gtsrb, an .npz file or a dataset folder.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pt).")
@click.option("--arch", default=None, help="Architecture (default: the paper's net for the dataset).")
@click.option("--epochs", type=int, default=None, help="Default: 3 for MNIST, 6 for GTSRB, 5 otherwise.")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 3e-3 MNIST, 1e-3 otherwise).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--badnets", is_flag=True, help="Poison the training set (BadNets).")
@click.option("--poison-rate", type=float, default=0.1, show_default=True)
@with_options(trigger_options)
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
@guard()
def train(ctx: click.Context, dataset: str, out: str, arch: str | None, epochs: int | None, lr: float | None,
          batch_size: int, seed: int, badnets: bool, poison_rate: float, target: int | None, trigger_size: int,
          trigger_position: str, trigger_colour: str, trigger_image: str | None, device: str) -> int:
    """Train a clean or BadNets-infected model and report clean accuracy and attack success."""
    from neuralcleanse.attacks.badnets import BadNets
    from neuralcleanse.attacks.trigger_files import make_patch_trigger
    from neuralcleanse.data import load_dataset
    from neuralcleanse.files import write_json
    from neuralcleanse.models.architectures import ARCHITECTURES, DEFAULT_ARCH_FOR_DATASET
    from neuralcleanse.models.checkpoint import save_checkpoint
    from neuralcleanse.training import DEFAULTS, train_model

    data = load_dataset(dataset)
    name = dataset.lower() if dataset.lower() in DEFAULT_ARCH_FOR_DATASET else None
    arch = arch or DEFAULT_ARCH_FOR_DATASET.get(name or "", None)
    if arch is None:
        raise InputError(f"choose an architecture with --arch ({', '.join(ARCHITECTURES)}) for {dataset}")
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown --arch {arch!r}; known: {', '.join(ARCHITECTURES)}")
    defaults = DEFAULTS.get(name or "", DEFAULTS["other"])
    bn = None
    if badnets or target is not None:
        target = 0 if target is None else target
        if not 0 <= target < data.train.num_classes:
            raise InputError(f"--target must lie in 0..{data.train.num_classes - 1}")
        if not 0 < poison_rate < 1:
            raise InputError("--poison-rate must lie in (0, 1)")
        trig = make_patch_trigger(data.train.input_shape, trigger_size,
                                  parse_position(trigger_position, "--trigger-position"),
                                  parse_floats(trigger_colour), trigger_image)
        bn = BadNets([trig], [target], poison_rate, seed=seed)
    model, report = train_model(data, arch, badnets=bn, epochs=epochs or defaults["epochs"],
                                lr=lr or defaults["lr"], batch_size=batch_size, seed=seed, device=parse_device(device),
                                progress=ctx.obj["progress"])
    path = save_checkpoint(model, out)
    write_json(Path(out).with_suffix(".json"), {"checkpoint": str(path), **report.to_dict()})
    click.echo(f"clean accuracy: {report.clean_accuracy:.2%}")
    for i, asr in report.attack_success.items():
        click.echo(f"attack success (trigger {i} -> label {bn.targets[i]}): {asr:.2%}")
    click.echo(f"model written to {path}")
    return EXIT_CLEAN
