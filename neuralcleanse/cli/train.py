"""`neuralcleanse train`: a clean, BadNets-infected or trojaned model."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import click
from click.core import ParameterSource

from neuralcleanse.cli.app import EXIT_CLEAN, guard, main
from neuralcleanse.cli.options import PATCH_OPTIONS, TROJAN_FLAGS, trigger_options, trojan_options, with_options
from neuralcleanse.options import parse_device, parse_floats, parse_ints, parse_position
from neuralcleanse.errors import InputError

if TYPE_CHECKING:
    from neuralcleanse.data.trigger import Trigger

# The arguments of BadNets that train's options set, and the trojan ones train names differently.
TRAIN_FLAGS = {**TROJAN_FLAGS, "poison_rate": "--poison-rate", "source_labels": "--source-labels",
               "cover_rate": "--cover-rate", "epochs": "--retrain-epochs"}
BADNETS_ONLY = {"poison_rate": "--poison-rate", **PATCH_OPTIONS, "trigger_file": "--trigger-file",
                "source_labels": "--source-labels", "cover_rate": "--cover-rate"}
TROJAN_ONLY = {"layer": "--layer", "neurons": "--neurons", "neuron_side": "--neuron-side", "mask_spec": "--mask",
               "target_activation": "--target-activation", "retrain_data": "--retrain-data", "samples": "--samples",
               "retrain_epochs": "--retrain-epochs", "retrain_lr": "--retrain-lr"}


@main.command()
@click.option("--dataset", "dataset", required=True,
              help="mnist, gtsrb, cifar10, an .npz file or a dataset folder.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (.pt); an infected model's trigger(s) go to OUT.trigger.npz.")
@click.option("--arch", default=None,
              help="Architecture: mnist, gtsrb, cifar10 (the paper's nets), resnet20 (a small ResNet), tiny "
                   "(default: the paper's net for the dataset).")
@click.option("--epochs", type=int, default=None, help="Default: 3 for MNIST, 6 for GTSRB, 5 otherwise.")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 3e-3 MNIST, 1e-3 otherwise).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--attack", "attack_name", type=click.Choice(["badnets", "trojan"]), default=None,
              help="Infect the model: badnets poisons the training set; trojan trains a clean model, then trojans "
                   "it (as `attack trojan` does). docs/attacks.md.")
@click.option("--badnets", is_flag=True, help="Same as --attack badnets.")
@click.option("--poison-rate", type=float, default=0.1, show_default=True,
              help="BadNets: share of the training images each trigger poisons (of the source labels' images "
                   "with --source-labels).")
@with_options(trigger_options)
@with_options(trojan_options)
@click.option("--retrain-epochs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Trojan: retraining epochs.")
@click.option("--retrain-lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Trojan: retraining learning rate (SGD, momentum 0.9).")
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
@guard(TRAIN_FLAGS)
def train(ctx: click.Context, dataset: str, out: str, arch: str | None, epochs: int | None, lr: float | None,
          batch_size: int, seed: int, attack_name: str | None, badnets: bool, poison_rate: float,
          target: tuple[int, ...], trigger_size: tuple[int, ...], trigger_position: tuple[str, ...],
          trigger_colour: tuple[str, ...], trigger_image: tuple[str, ...], trigger_file: tuple[str, ...],
          source_labels: str | None, cover_rate: float | None, layer: str | None, neurons: int, neuron_side: str,
          mask_spec: str | None, target_activation: float, retrain_data: str, samples: int, retrain_epochs: int,
          retrain_lr: float, device: str) -> int:
    """Train a clean, BadNets-infected or trojaned model; report clean accuracy and attack success.

    Several BadNets triggers: repeat --target and/or the trigger options (each given once, shared, or
    once per trigger), or --trigger-file. --target alone implies --attack badnets.
    """
    from neuralcleanse.attacks.badnets import BadNets
    from neuralcleanse.attacks.trigger_files import trigger_file_path, write_trigger_file
    from neuralcleanse.data import load_dataset
    from neuralcleanse.files import write_json
    from neuralcleanse.models.architectures import ARCHITECTURES, DEFAULT_ARCH_FOR_DATASET
    from neuralcleanse.models.formats.checkpoint import save_checkpoint
    from neuralcleanse.training import DEFAULTS, train_model

    given = {name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if badnets and attack_name == "trojan":
        raise InputError("--badnets means --attack badnets; it contradicts --attack trojan")
    attack_name = "badnets" if badnets else attack_name
    if attack_name is None and (target or given & set(BADNETS_ONLY)):
        attack_name = "badnets"  # the trigger options alone mean BadNets, as --target alone always did
    # Without an attack, BadNets options have already made it BadNets: only Trojan ones can be misplaced.
    wrong, owner = (BADNETS_ONLY, "--attack badnets") if attack_name == "trojan" else (TROJAN_ONLY, "--attack trojan")
    misplaced = [flag for name, flag in wrong.items() if name in given]
    if misplaced:
        raise InputError(f"{', '.join(misplaced)} {'applies' if len(misplaced) == 1 else 'apply'} to {owner}, "
                         f"not to {'--attack ' + attack_name if attack_name else 'a clean model'}")

    data = load_dataset(dataset)
    name = dataset.lower() if dataset.lower() in DEFAULT_ARCH_FOR_DATASET else None
    arch = arch or DEFAULT_ARCH_FOR_DATASET.get(name or "", None)
    if arch is None:
        raise InputError(f"choose an architecture with --arch ({', '.join(ARCHITECTURES)}) for {dataset}")
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown --arch {arch!r}; known: {', '.join(ARCHITECTURES)}")
    num_classes, shape = data.train.num_classes, data.train.input_shape
    for t in target:
        if not 0 <= t < num_classes:
            raise InputError(f"--target must lie in 0..{num_classes - 1}")
    defaults = DEFAULTS.get(name or "", DEFAULTS["other"])
    device_ = parse_device(device)
    bn = trojan_attack = None
    if attack_name == "badnets":
        if not 0 < poison_rate < 1:
            raise InputError("--poison-rate must lie in (0, 1)")
        triggers, targets = badnets_triggers(shape, list(target), trigger_size, trigger_position, trigger_colour,
                                             trigger_image, trigger_file)
        for t in targets:
            if not 0 <= t < num_classes:
                raise InputError(f"a trigger file's target {t} is not a label (0..{num_classes - 1})")
        sources = parse_ints(source_labels) if source_labels else None
        if sources is not None and any(not 0 <= s < num_classes for s in sources):
            raise InputError(f"--source-labels must lie in 0..{num_classes - 1}")
        bn = BadNets(triggers, targets, poison_rate, seed=seed, source_labels=sources, cover_rate=cover_rate)
    elif attack_name == "trojan":
        from neuralcleanse.attacks.trojan import TrojanAttack
        from neuralcleanse.attacks.trojan_trigger import trojan_mask

        if len(target) > 1:
            raise InputError("the Trojan attack makes one trigger for one --target")
        trojan_mask(mask_spec, shape)  # a bad --mask must cost no training
        trojan_attack = TrojanAttack(layer, neurons=neurons, neuron_side=neuron_side,
                                     target_activation=target_activation, mask=mask_spec, data=retrain_data,
                                     samples=samples, epochs=retrain_epochs, lr=retrain_lr, seed=seed, device=device_,
                                     progress=ctx.obj["progress"])
    model, report = train_model(data, arch, badnets=bn, epochs=epochs or defaults["epochs"],
                                lr=lr or defaults["lr"], batch_size=batch_size, seed=seed, device=device_,
                                progress=ctx.obj["progress"])
    if trojan_attack is not None:
        from neuralcleanse.cli.attack import print_trojan, write_trojaned

        result = trojan_attack.attack(model, data, target[0] if target else 0)
        lines = write_trojaned(result, out, {"training": report.to_dict()})
        print_trojan(result)
        for line in lines:
            click.echo(line)
        return EXIT_CLEAN
    path = save_checkpoint(model, out)
    write_json(Path(out).with_suffix(".json"), {"checkpoint": str(path), **report.to_dict()})
    click.echo(f"clean accuracy: {report.clean_accuracy:.2%}")
    if bn is not None:
        for i, asr in report.attack_success.items():
            scope = f" on source labels {bn.source_labels}" if bn.source_labels is not None else ""
            click.echo(f"attack success (trigger {i} -> label {bn.targets[i]}){scope}: {asr:.2%}")
            if i in report.non_source_attack_success:
                click.echo(f"  on the other labels (should stay low): {report.non_source_attack_success[i]:.2%}")
        trig_path = write_trigger_file(trigger_file_path(out), bn.triggers, bn.targets, attack="badnets",
                                       source_labels=bn.source_labels)
        click.echo(f"trigger{'s' if len(bn.triggers) > 1 else ''} written to {trig_path}")
    click.echo(f"model written to {path}")
    return EXIT_CLEAN


def badnets_triggers(shape: Sequence[int], targets: list[int], sizes: Sequence[int], positions: Sequence[str],
                     colours: Sequence[str], images: Sequence[str], files: Sequence[str]
                     ) -> tuple[list[Trigger], list[int]]:
    """The triggers and their targets from train's options.

    Patches: each trigger option is given once (shared by every trigger) or once per trigger; the
    number of triggers is the most times any of them, --target included, is given. --target given once
    sends every trigger to it (several triggers for one label); given once per trigger, pairs them.
    Files (--trigger-file, .npz or an image) replace the patch options: their triggers in order, their
    targets from --target (once, or once per trigger) or else from the files' own `target` arrays.
    """
    from neuralcleanse.attacks.trigger_files import image_trigger, make_patch_trigger, read_trigger_file

    if files:
        patch_given = [PATCH_OPTIONS[k] for k, v in (("trigger_size", sizes), ("trigger_position", positions),
                                                     ("trigger_colour", colours), ("trigger_image", images)) if v]
        if patch_given:
            raise InputError(f"--trigger-file gives the whole trigger; drop {', '.join(patch_given)}")
        triggers: list[Trigger] = []
        recorded: list[int] | None = []
        for path in files:
            if Path(path).suffix.lower() == ".npz":
                found, found_targets = read_trigger_file(path, shape)
            else:
                found, found_targets = [image_trigger(path, shape)], None
            triggers += found
            recorded = recorded + found_targets if recorded is not None and found_targets is not None else None
        if targets:
            chosen = _per_trigger(targets, len(triggers), "--target")
        elif recorded is not None:
            chosen = recorded
        else:
            raise InputError("give --target: not every --trigger-file records its target")
        _refuse_duplicates(triggers)
        return triggers, chosen
    options = {"--target": targets, "--trigger-size": list(sizes), "--trigger-position": list(positions),
               "--trigger-colour": list(colours), "--trigger-image": list(images)}
    k = max([len(v) for v in options.values()] + [1])
    per = {flag: _per_trigger(values, k, flag) if values else None for flag, values in options.items()}
    triggers = []
    for i in range(k):
        pick = lambda flag, default: per[flag][i] if per[flag] else default  # noqa: E731
        triggers.append(make_patch_trigger(shape, pick("--trigger-size", 4),
                                           parse_position(pick("--trigger-position", "bottom-right"),
                                                          "--trigger-position"),
                                           parse_floats(pick("--trigger-colour", "1.0")), pick("--trigger-image", None)))
    _refuse_duplicates(triggers)
    return triggers, per["--target"] or [0] * k


def _per_trigger(values: Sequence, k: int, flag: str) -> list:
    if len(values) == 1:
        return list(values) * k
    if len(values) != k:
        raise InputError(f"{flag} is given {len(values)} times but there are {k} triggers: give it once (shared by "
                         "all) or once per trigger")
    return list(values)


def _refuse_duplicates(triggers: Sequence[Trigger]) -> None:
    for i in range(len(triggers)):
        for j in range(i):
            a, b = triggers[i], triggers[j]
            if a.mask.equal(b.mask) and a.pattern.equal(b.pattern):
                raise InputError(f"triggers {j} and {i} are the same: give each its own --trigger-position, "
                                 "--trigger-colour, --trigger-size, --trigger-image or --trigger-file")
