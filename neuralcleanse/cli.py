"""Command line: train, scan, mitigate, report, demo.

Exit codes: 0 clean verdict (or success), 3 infected verdict, 2 bad input, 1 crash.
"""
from __future__ import annotations

import functools
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click
import torch

from neuralcleanse.errors import InputError

EXIT_CLEAN = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_INFECTED = 3

log = logging.getLogger("neuralcleanse")


def _floats(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"expected comma-separated label numbers, got {text!r}") from None


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available to PyTorch")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu or cuda") from None


def _guard(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Maps outcomes to exit codes: InputError → 2 with one line, any other error → 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = fn(*args, **kwargs) or 0
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            code = EXIT_BAD_INPUT
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            code = 130
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception:  # a bug: show everything so it can be reported
            traceback.print_exc()
            code = EXIT_CRASH
        sys.exit(code)

    return wrapper


class _OneLineErrors(click.Group):
    """Usage errors as one `error:` line with exit code 2, like every other bad input."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="neuralcleanse")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Find, show and remove backdoors in image classifiers (Neural Cleanse)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    ctx.obj = {"progress": not quiet}


trigger_options = [
    click.option("--target", type=int, default=None, help="BadNets target label (default 0)."),
    click.option("--trigger-size", type=int, default=4, show_default=True, help="Side of the square patch."),
    click.option("--trigger-position", default="bottom-right", show_default=True,
                 help="bottom-right, bottom-left, top-right, top-left, center, or ROW,COL."),
    click.option("--trigger-colour", default="1.0", show_default=True,
                 help="Patch colour in [0,1]: one grey value or R,G,B."),
    click.option("--trigger-image", type=click.Path(dir_okay=False), default=None,
                 help="An image file used as the patch's content (resized to the patch)."),
]


def _with(options: list) -> Callable:
    def deco(fn: Callable) -> Callable:
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return deco


def _patch_trigger(input_shape, size: int, position: str, colour: str, image: str | None):
    from neuralcleanse.attacks.trigger import patch_trigger

    pos: Any = position
    if "," in position:
        try:
            pos = tuple(int(v) for v in position.split(","))
        except ValueError:
            raise InputError(f"--trigger-position {position!r} is not ROW,COL") from None
    pattern_image = None
    if image:
        import numpy as np
        from PIL import Image

        try:
            img = Image.open(image).convert("L" if input_shape[0] == 1 else "RGB").resize((size, size))
        except OSError as exc:
            raise InputError(f"cannot read trigger image {image}: {exc}") from None
        arr = np.asarray(img, dtype=np.float32) / 255.0
        pattern_image = arr if arr.ndim == 2 else arr.transpose(2, 0, 1)
    try:
        return patch_trigger(input_shape, size, pos, _floats(colour), pattern_image=pattern_image)
    except ValueError as exc:
        raise InputError(str(exc)) from None


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
@_with(trigger_options)
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
@_guard
def train(ctx: click.Context, dataset: str, out: str, arch: str | None, epochs: int | None, lr: float | None,
          batch_size: int, seed: int, badnets: bool, poison_rate: float, target: int | None, trigger_size: int,
          trigger_position: str, trigger_colour: str, trigger_image: str | None, device: str) -> int:
    """Train a clean or BadNets-infected model and report clean accuracy and attack success."""
    from neuralcleanse.attacks.badnets import BadNets
    from neuralcleanse.data import load_dataset
    from neuralcleanse.models.architectures import ARCHITECTURES, DEFAULT_ARCH_FOR_DATASET
    from neuralcleanse.models.checkpoint import save_checkpoint
    from neuralcleanse.report.files import write_json
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
        trig = _patch_trigger(data.train.input_shape, trigger_size, trigger_position, trigger_colour, trigger_image)
        bn = BadNets([trig], [target], poison_rate, seed=seed)
    model, report = train_model(data, arch, badnets=bn, epochs=epochs or defaults["epochs"],
                                lr=lr or defaults["lr"], batch_size=batch_size, seed=seed, device=_device(device),
                                progress=ctx.obj["progress"])
    path = save_checkpoint(model, out)
    write_json(Path(out).with_suffix(".json"), {"checkpoint": str(path), **report.to_dict()})
    click.echo(f"clean accuracy: {report.clean_accuracy:.2%}")
    for i, asr in report.attack_success.items():
        click.echo(f"attack success (trigger {i} -> label {bn.targets[i]}): {asr:.2%}")
    click.echo(f"model written to {path}")
    return EXIT_CLEAN


preprocessing_options = [
    click.option("--num-classes", type=int, default=None, help="Label count (for models from elsewhere)."),
    click.option("--factory", default=None,
                 help="package.module:function_or_class that builds the network MODEL's weights (state_dict "
                      "or .safetensors) belong to."),
    click.option("--factory-kwargs", default=None, help="JSON object of keyword arguments for --factory."),
    click.option("--trust-pickle", is_flag=True,
                 help="Allow MODEL to be a whole pickled nn.Module (loading it runs code from the file)."),
    click.option("--input-layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True,
                 help="How a model from elsewhere takes images; auto tries both on a probe."),
    click.option("--labels-from-model", is_flag=True,
                 help="Use the model's own predictions as labels (for unlabelled data; the scan trusts them)."),
    click.option("--pixel-range", type=click.Choice(["1", "255"]), default=None,
                 help="What the model takes: pixels in [0,1] or [0,255]."),
    click.option("--mean", default=None, help="Per-channel mean the model subtracts, e.g. 0.485,0.456,0.406."),
    click.option("--std", default=None, help="Per-channel std the model divides by."),
    click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default=None),
]


def load_model_and_data(model_path: str, data_source: str, num_classes: int | None, pixel_range: str | None,
                        mean: str | None, std: str | None, channel_order: str | None, factory: str | None = None,
                        factory_kwargs: str | None = None, trust_pickle: bool = False, input_layout: str = "auto",
                        labels_from_model: bool = False):
    from neuralcleanse.data import Preprocessing, load_dataset
    from neuralcleanse.models.loading import complete_model_info, load_model

    given = {"pixel_scale": float(pixel_range) if pixel_range else None, "mean": _floats(mean) or None,
             "std": _floats(std) or None, "channel_order": channel_order}
    overrides = {k: v for k, v in given.items() if v is not None}
    if ("mean" in overrides) != ("std" in overrides):
        raise InputError("give --mean and --std together")
    try:
        Preprocessing(**overrides)
    except ValueError as exc:
        raise InputError(f"bad preprocessing flags: {exc}") from None
    from neuralcleanse.models.foreign import parse_kwargs

    if factory_kwargs and not factory:
        raise InputError("--factory-kwargs needs --factory")
    model = load_model(model_path, num_classes=num_classes, preprocessing_overrides=overrides, factory=factory,
                       factory_kwargs=parse_kwargs(factory_kwargs), trust_pickle=trust_pickle,
                       input_layout=input_layout)
    c, h, w = model.info.input_shape
    # Image folders are resized to what the model takes, when the model file says.
    data = load_dataset(data_source, image_size=(h, w) if h and w else None, channels=c or None)
    complete_model_info(model, data.test.input_shape, data.test.num_classes)
    unlabelled = bool((data.test.y < 0).any())
    if unlabelled and not labels_from_model:
        raise InputError(f"{data_source} has no labels (a flat folder of images); add --labels-from-model to "
                         "use the model's predictions, or sort the images into one sub-folder per class")
    if labels_from_model:
        from neuralcleanse.pipeline import use_model_labels

        data = use_model_labels(model, data)
    return model, data


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--data", "data_source", required=True, help="mnist, gtsrb, an .npz file or a dataset folder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the report.")
@click.option("--preset", type=click.Choice(["fast", "original"]), default="fast", show_default=True)
@click.option("--samples", type=click.IntRange(min=10), default=None,
              help="Clean samples to optimise with (default 1000).")
@click.option("--labels", default=None, help="Only these labels, e.g. 0,3,7 (outlier analysis needs ≥3).")
@click.option("--loss", type=click.Choice(["cross_entropy", "original"]), default=None,
              help="original = the published code's swapped cross-entropy.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Override the preset's step budget per label.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Anomaly index that flags a label.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--block-size", type=click.IntRange(min=1), default=None,
              help="Labels optimised per pass (default: chosen from the hardware). Fix it for bit-for-bit repeats.")
@click.option("--resume", is_flag=True, help="Go on with an interrupted scan in --out (same command otherwise).")
@click.option("--force", is_flag=True, help="Replace a finished or interrupted scan in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout (messages go to stderr).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: the model's forward pass under autocast (for GPUs; slow on most CPUs).")
@_with(preprocessing_options)
@click.pass_context
@_guard
def scan(ctx: click.Context, model_path: str, data_source: str, out: str, preset: str, samples: int | None,
         labels: str | None, loss: str | None, max_steps: int | None, threshold: float, seed: int,
         block_size: int | None, resume: bool, force: bool, as_json: bool, device: str, precision: str,
         num_classes: int | None,
         factory: str | None, factory_kwargs: str | None, trust_pickle: bool, input_layout: str,
         labels_from_model: bool, pixel_range: str | None, mean: str | None, std: str | None, channel_order: str | None) -> int:
    """Reverse-engineer a trigger for every label and flag the outliers.

    Exit code 0: no label flagged; 3: infected (at least one label flagged); 2: bad input; 1: crash.
    """
    from neuralcleanse.pipeline import check_scan_folder, run_scan
    from neuralcleanse.report.scan_report import REPORT_NAME, load_scan

    if resume and force:
        raise InputError("--resume and --force contradict each other: resume keeps the run in --out, force replaces it")
    if check_scan_folder(out, resume=resume, force=force):
        result, report = load_scan(out)
        click.echo(f"{Path(out) / REPORT_NAME} is a finished scan: nothing to resume", err=True)
        _print_verdict(result, out, as_json, report)
        return EXIT_INFECTED if result.infected else EXIT_CLEAN
    model, data = load_model_and_data(model_path, data_source, num_classes, pixel_range, mean, std, channel_order,
                                      factory, factory_kwargs, trust_pickle, input_layout, labels_from_model)
    if force:  # only once the inputs are known good: a typo must not cost the finished scan
        (Path(out) / REPORT_NAME).unlink(missing_ok=True)
    label_list = _ints(labels) if labels else None
    result = run_scan(model, data.test, out, resume=resume, preset=preset, samples=samples, labels=label_list, loss=loss,
                      max_steps=max_steps, threshold=threshold, seed=seed, block_size=block_size,
                      device=_device(device), precision=precision,
                      progress=ctx.obj["progress"], model_desc={"path": str(model_path)},
                      data_desc={"source": data_source})
    _print_verdict(result, out, as_json)
    return EXIT_INFECTED if result.infected else EXIT_CLEAN


def _write_page(run_dir: str | Path, out: str | Path | None = None, mitigations=()) -> Path:
    from neuralcleanse.report.html_report import write_html_report

    return write_html_report(run_dir, out, mitigations=mitigations)


def _print_verdict(result, out: str, as_json: bool = False, report: dict | None = None) -> None:
    """The verdict for people; with --json they go to stderr and stdout carries report.json."""
    import json

    idx = result.anomaly_index
    idx_text = "inf" if idx == float("inf") else f"{idx:.2f}"
    if result.infected:
        click.echo(f"verdict: INFECTED — flagged label(s) {result.flagged}, anomaly index {idx_text}", err=as_json)
    else:
        click.echo(f"verdict: clean — no label flagged (anomaly index of the smallest norm {idx_text})", err=as_json)
    click.echo(f"report: {Path(out) / 'report.json'}; page: {_write_page(out)}", err=as_json)
    if as_json:
        click.echo(json.dumps(report or json.loads((Path(out) / "report.json").read_text()), indent=2))


def _real_backdoors(model, target: int | None, size: int | None, position: str, colour: str,
                    mask_path: str | None, pattern_path: str | None):
    """The true trigger for measuring: from the flags when given, else what the checkpoint carries."""
    from neuralcleanse.attacks.trigger import Trigger
    from neuralcleanse.mitigation.backdoors import Backdoor, known_backdoors

    given = size is not None or mask_path or pattern_path
    if target is None:
        if given:
            raise InputError("give --real-target with the real trigger")
        return known_backdoors(model.info.metadata)
    if not 0 <= target < model.num_classes:
        raise InputError(f"--real-target must lie in 0..{model.num_classes - 1}")
    if bool(mask_path) != bool(pattern_path):
        raise InputError("give --real-mask and --real-pattern together")
    if mask_path:
        if size is not None:
            raise InputError("give the real trigger as a patch (--real-size) or as --real-mask/--real-pattern, not both")
        trigger = Trigger(_read_image(mask_path, model.input_shape, grey=True)[0],
                          _read_image(pattern_path, model.input_shape, grey=model.input_shape[0] == 1))
    else:
        if size is None:
            raise InputError("give the real trigger with --real-target: a patch (--real-size, with --real-position "
                             "and --real-colour) or --real-mask and --real-pattern")
        trigger = _patch_trigger(model.input_shape, size, position, colour, None)
    return [Backdoor(target, trigger)]


def _read_image(path: str, input_shape, grey: bool):
    import numpy as np
    from PIL import Image

    c, h, w = input_shape
    try:
        img = Image.open(path).convert("L" if grey else "RGB")
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    if img.size != (w, h):
        raise InputError(f"{path} is {img.width}x{img.height} but the model takes {w}x{h} images")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


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
@click.option("--top-fraction", type=float, default=0.01, show_default=True, help="filter: share of top units scored.")
@click.option("--fpr", type=float, default=0.05, show_default=True, help="filter: false-positive rate on clean data.")
@click.option("--step", type=float, default=0.02, show_default=True, help="prune: share of the layer per step.")
@click.option("--stop-success", type=float, default=0.05, show_default=True,
              help="prune: stop once the reversed trigger succeeds less often than this.")
@click.option("--max-fraction", type=float, default=1.0, show_default=True, help="prune: never prune more.")
@click.option("--epochs", type=int, default=1, show_default=True, help="unlearn: fine-tuning epochs.")
@click.option("--trigger-share", type=float, default=0.2, show_default=True,
              help="unlearn: share of the fine-tuning set that carries the reversed trigger.")
@click.option("--data-fraction", type=float, default=0.1, show_default=True,
              help="unlearn: share of the training split fine-tuned on.")
@click.option("--lr", type=float, default=None,
              help="unlearn: Adam learning rate (default: the model's own training rate if recorded, else 1e-3).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="unlearn: also fine-tune with no trigger and with the real trigger (when known).")
@click.option("--real-target", type=int, default=None, help="Label of the real backdoor, to measure against.")
@click.option("--real-size", type=int, default=None, help="Real trigger as a square patch of this side...")
@click.option("--real-position", default="bottom-right", show_default=True, help="...at this position...")
@click.option("--real-colour", default="1.0", show_default=True, help="...in this colour.")
@click.option("--real-mask", type=click.Path(dir_okay=False), default=None, help="Real trigger's mask image.")
@click.option("--real-pattern", type=click.Path(dir_okay=False), default=None, help="Real trigger's pattern image.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace a finished mitigation already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print mitigation.json on stdout (messages go to stderr).")
@click.option("--device", default="cpu", show_default=True)
@_with(preprocessing_options)
@click.pass_context
@_guard
def mitigate(ctx: click.Context, model_path: str, scan_dir: str, data_source: str, method: str, out: str,
             labels: str | None, layer: str | None, top_fraction: float, fpr: float, step: float,
             stop_success: float, max_fraction: float, epochs: int, trigger_share: float, data_fraction: float,
             lr: float | None, baselines: bool, real_target: int | None, real_size: int | None, real_position: str,
             real_colour: str, real_mask: str | None, real_pattern: str | None, seed: int, force: bool,
             as_json: bool, device: str, num_classes: int | None, factory: str | None, factory_kwargs: str | None,
             trust_pickle: bool, input_layout: str, labels_from_model: bool, pixel_range: str | None, mean: str | None, std: str | None,
             channel_order: str | None) -> int:
    """Remove or block a backdoor found by `scan`: input filter, neuron pruning or unlearning.

    Writes OUT/mitigation.json (clean accuracy and attack success before and after), a chart and
    the patched model. Exit code 0 when done, 2 for bad input (including a scan with no flagged label).
    """
    from neuralcleanse.mitigation.runner import mitigate as run_mitigation
    from neuralcleanse.report.mitigation_report import MITIGATION_NAME, write_mitigation_report
    from neuralcleanse.report.scan_report import load_scan

    if (Path(out) / MITIGATION_NAME).exists() and not force:
        raise InputError(f"{Path(out) / MITIGATION_NAME} already holds a finished mitigation; "
                         "choose another --out or add --force to replace it")
    scan_result, scan_report = load_scan(scan_dir)
    model, data = load_model_and_data(model_path, data_source, num_classes, pixel_range, mean, std, channel_order,
                                      factory, factory_kwargs, trust_pickle, input_layout, labels_from_model)
    if scan_result.masks.shape[-2:] != tuple(model.input_shape[1:]):
        raise InputError(f"the scan in {scan_dir} was made for {tuple(scan_result.masks.shape[-2:])} images, "
                         f"not this model's {tuple(model.input_shape[1:])}")
    real = _real_backdoors(model, real_target, real_size, real_position, real_colour, real_mask, real_pattern)
    if force:  # inputs are good: the old results go now, so a failure below cannot leave them beside new files
        (Path(out) / MITIGATION_NAME).unlink(missing_ok=True)
    try:
        outcome = run_mitigation(
            model, scan_result, data, method, labels=_ints(labels) if labels else None, real=real, layer=layer,
            top_fraction=top_fraction, false_positive_rate=fpr, prune_step=step, stop_success=stop_success,
            max_fraction=max_fraction, epochs=epochs, trigger_share=trigger_share, data_fraction=data_fraction,
            lr=lr, baselines=baselines, seed=seed, device=_device(device), progress=ctx.obj["progress"])
    except ValueError as exc:
        raise InputError(str(exc)) from None
    path = write_mitigation_report(outcome, out, model={"path": str(model_path), "source": model.info.source},
                                   scan_dir=str(scan_dir), data={"source": data_source})
    # One page with the scan and this mitigation, in the mitigation's folder.
    page = _write_page(scan_dir, Path(out) / "report.html", mitigations=[out])
    _print_mitigation(outcome, path, as_json)
    click.echo(f"page: {page}", err=as_json)
    if as_json:
        click.echo(path.read_text().rstrip())
    return EXIT_CLEAN


def _print_mitigation(outcome, path: Path, as_json: bool = False) -> None:
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
    echo(f"results: {path}")


@main.command()
@click.argument("run_dir", metavar="DIR", type=click.Path())
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="HTML file to write (default: DIR/report.html).")
@click.option("--mitigation", "mitigations", multiple=True, type=click.Path(file_okay=False),
              help="Also show this mitigation folder (sub-folders of DIR holding mitigation.json are found anyway).")
@_guard
def report(run_dir: str, out: str | None, mitigations: tuple[str, ...]) -> int:
    """Write one self-contained HTML page for a scan (or mitigation) folder: verdict, anomaly index,
    norms chart, every label's reversed trigger, settings and mitigation results. Opens in any browser,
    offline."""
    click.echo(f"page: {_write_page(run_dir, out, mitigations)}")
    return EXIT_CLEAN


@main.command()
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="cpu", show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.pass_context
@_guard
def demo(ctx: click.Context, out: str, device: str, epochs: int) -> int:
    """Train a BadNets MNIST model (4x4 white square, bottom-right, target 7), scan it, report."""
    from neuralcleanse.demo import run_demo

    run_demo(out, device=_device(device), epochs=epochs, progress=ctx.obj["progress"], echo=click.echo)
    return EXIT_CLEAN


if __name__ == "__main__":
    main()
