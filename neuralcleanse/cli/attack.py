"""`neuralcleanse attack`: infect a trained model (the Trojan attack). BadNets poisons training, so it
lives in `train --attack badnets`."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from neuralcleanse.cli.app import EXIT_CLEAN, guard, main
from neuralcleanse.cli.options import TROJAN_FLAGS, preprocessing_options, trojan_options, with_options
from neuralcleanse.options import PREPROCESSING_FLAGS, load_model_and_data_from_flags, parse_device

if TYPE_CHECKING:
    from neuralcleanse.attacks.trojan import TrojanResult
    from neuralcleanse.models.classifier import Classifier


@main.group()
def attack() -> None:
    """Infect a trained model with a backdoor (BadNets poisons training instead: `train --attack badnets`)."""


@attack.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--data", "data_source", required=True,
              help="mnist, gtsrb, cifar10, an .npz file or a dataset folder: retraining images from its train split, "
                   "figures on its test split.")
@click.option("--target", type=int, required=True, help="The label the trigger sends inputs to.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The trojaned model (.pt); its trigger goes to OUT.trigger.npz, figures to OUT.json.")
@with_options(trojan_options)
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True, help="Retraining epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Retraining learning rate (SGD, momentum 0.9).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@with_options(preprocessing_options)
@click.pass_context
@guard(PREPROCESSING_FLAGS | TROJAN_FLAGS)
def trojan(ctx: click.Context, model_path: str, data_source: str, target: int, out: str, layer: str | None,
           neurons: int, neuron_side: str, mask_spec: str | None, target_activation: float, retrain_data: str,
           samples: int, epochs: int, lr: float, seed: int, device: str, **model_flags: Any) -> int:
    """The Trojan attack (Liu et al., NDSS 2018) on a trained MODEL: a trigger made for a few neurons of
    an internal layer, then only the layers from it to the output retrained (docs/attacks.md)."""
    from neuralcleanse.attacks.trojan import TrojanAttack

    trojan_attack = TrojanAttack(layer, neurons=neurons, neuron_side=neuron_side, target_activation=target_activation,
                                 mask=mask_spec, data=retrain_data, samples=samples, epochs=epochs, lr=lr, seed=seed,
                                 device=parse_device(device), progress=ctx.obj["progress"])
    model, data = load_model_and_data_from_flags(model_path, data_source, **model_flags)
    result = trojan_attack.attack(model, data, target)
    written = write_trojaned(result, out, {"source_model": str(model_path), "data": data_source})
    print_trojan(result)
    for line in written:
        click.echo(line)
    return EXIT_CLEAN


def save_model(model: Classifier, out: str | Path) -> str:
    """The model in the tool's checkpoint format, or, for a network built elsewhere (a `--factory`
    state_dict, a pickled module), its state_dict, loadable with the same `--factory`."""
    import torch

    from neuralcleanse.files import write_atomic
    from neuralcleanse.models.formats.checkpoint import save_checkpoint
    from neuralcleanse.models.layout import ChannelsLastInput

    if model.info.arch is not None:
        return f"model written to {save_checkpoint(model, out)}"
    net = model.net.net if isinstance(model.net, ChannelsLastInput) else model.net
    path = write_atomic(out, lambda tmp: torch.save(net.state_dict(), tmp))
    return f"model written to {path} (the network's state_dict: load it with the same --factory)"


def write_trojaned(result: TrojanResult, out: str | Path, extra: dict[str, Any] | None = None) -> list[str]:
    """The model at `out`, its trigger at OUT.trigger.npz and the figures at OUT.json; returns what to say."""
    from neuralcleanse.attacks.trigger_files import trigger_file_path, write_trigger_file
    from neuralcleanse.files import write_json

    lines = [save_model(result.model, out)]
    trigger_path = write_trigger_file(trigger_file_path(out), [result.trigger], [result.target], attack="trojan")
    write_json(Path(out).with_suffix(".json"), {"checkpoint": str(out), **(extra or {}), "trojan": result.to_dict()})
    lines.append(f"trigger written to {trigger_path}")
    return lines


def print_trojan(result: TrojanResult) -> None:
    acts = ", ".join(f"{b:.2f} -> {a:.2f}" for b, a in zip(result.activation_before, result.activation_after))
    click.echo(f"trojan: layer {result.layer}, neuron(s) {result.neurons} ({result.neuron_side} weights), "
               f"activation {acts}")
    click.echo(f"retrained on {result.retrain_samples} {result.retrain_data} images (+ the same with the trigger) "
               f"in {result.wall_time_s:.0f} s")
    click.echo(f"clean accuracy: {result.clean_accuracy_before:.2%} -> {result.clean_accuracy_after:.2%}")
    click.echo(f"attack success (trigger -> label {result.target}): {result.attack_success_before:.2%} -> "
               f"{result.attack_success:.2%}")
