"""One mitigation run as the command line does it: split the data, fit the configured method on one part,
measure before and after on the other, and rescan the patched model."""
from __future__ import annotations

import copy
import inspect
import time
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import nn

from neuralcleanse.data.dataset import DatasetSplits, ImageDataset
from neuralcleanse.data.trigger import Backdoor, known_backdoors
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.errors import InputError
from neuralcleanse.mitigation.backdoors import reversed_backdoors
from neuralcleanse.mitigation.anp import AdversarialNeuronPruning
from neuralcleanse.mitigation.base import Mitigation, MitigationResult, Tuning
from neuralcleanse.mitigation.chain import Chain
from neuralcleanse.mitigation.input_filter import InputFilter
from neuralcleanse.mitigation.pruning import NeuronPruner
from neuralcleanse.mitigation.sau import SharedAdversarialUnlearning
from neuralcleanse.mitigation.unlearning import Unlearner
from neuralcleanse.mitigation.verify import rescan

# The command line's names for the methods; unlearning removes the backdoor where the others hide it.
METHODS: dict[str, type[Mitigation]] = {"unlearn": Unlearner, "filter": InputFilter, "prune": NeuronPruner,
                                        "anp": AdversarialNeuronPruning, "sau": SharedAdversarialUnlearning}
DEFAULT_METHOD = "unlearn"
# Draws from the tuning split: units are ranked and thresholds set on FIT_SAMPLES images, the pruning
# curve (which picks the model kept) is measured on CURVE_SAMPLES others.
FIT_SAMPLES, CURVE_SAMPLES = 2000, 2000
VERIFY_OTHERS = 10  # labels rescanned beside the treated ones, for the median and spread


RUN_PARAMETERS = ("seed", "device", "progress")  # set by the command line's own flags, not by --param


def make_method(name: str, params: dict[str, Any] | None = None, **run: Any) -> Mitigation:
    """METHODS[name] configured with `params` (the command line's `--param KEY=VALUE`, every name
    checked) and `run` (seed, device, progress: given to the methods that take them). "a+b" chains methods
    (Chain): a parameter "a.key" goes to step a, a plain "key" to every step that has it."""
    params = dict(params or {})
    if "+" in name:
        names = name.split("+")
        unknown = [n for n in names if n not in METHODS]
        if unknown or len(set(names)) != len(names):
            raise InputError(f"unknown method {name!r}; chain distinct methods of {', '.join(METHODS)} with +")
        own = {n: {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(n + ".")} for n in names}
        shared = {k: v for k, v in params.items() if "." not in k}
        stray = sorted(k for k in params if "." in k and k.split(".", 1)[0] not in names)
        unused = sorted(k for k in shared if not any(k in _parameters(METHODS[n]) for n in names))
        if stray or unused:
            raise InputError(f"{name} has no parameter {', '.join(stray + unused)}")
        return Chain(*(make_method(n, {**{k: v for k, v in shared.items() if k in _parameters(METHODS[n])},
                                       **own[n]}, **run) for n in names))
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    cls = METHODS[name]
    signature = inspect.signature(cls).parameters
    accepted = _parameters(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InputError(f"{name} has no parameter {', '.join(unknown)}; its parameters: {', '.join(accepted)}")
    try:
        return cls(**params, **{k: v for k, v in run.items() if k in signature})
    except TypeError as exc:  # a value of the wrong kind for a parameter
        raise InputError(f"{name}: {exc}") from None


def _parameters(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p not in RUN_PARAMETERS]


def split_for_mitigation(data: DatasetSplits, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(tune, held_out): the train split tunes (ranks units, sets the threshold, fine-tunes), the
    test split measures. A single set (train is test) is cut in two halves so nothing is measured
    on what tuned it."""
    if data.train is not data.test:
        return data.train, data.test
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))
    half = len(order) // 2
    return data.test.subset(order[:half]), data.test.subset(order[half:])


def tuning_draws(tune: ImageDataset, seed: int = 0) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """(fit, curve, capped): disjoint seeded draws from `tune`, and the two together. A user's small set is
    shared in proportion (half each), so the curve that picks the pruned model is never measured on the
    images that ranked the units."""
    order = torch.randperm(len(tune), generator=torch.Generator().manual_seed(seed))
    total = FIT_SAMPLES + CURVE_SAMPLES
    n_fit = FIT_SAMPLES if len(tune) >= total else max(1, len(tune) * FIT_SAMPLES // total)
    return (tune.subset(order[:n_fit]), tune.subset(order[n_fit: n_fit + CURVE_SAMPLES]),
            tune.subset(order[:total]))


def mitigate(model: nn.Module, scan: ScanResult, data: DatasetSplits, method: Mitigation | str = DEFAULT_METHOD, *,
             labels: Sequence[int] | None = None, real: Sequence[Backdoor] | None = None,
             extra_triggers: Sequence[Backdoor] = (), baselines: bool = False, verify: bool = True,
             verify_others: int = VERIFY_OTHERS) -> MitigationResult:
    """Runs `method` (a configured Unlearner, InputFilter or NeuronPruner, or one of METHODS by name with
    its defaults) with the reversed triggers of the scan's flagged labels (or `labels`), as the command
    line does: fitted on one part of `data` (its train split, or half of a single set), measured on the
    other, with the method's `seed` and `device`.

    `real` (the true triggers, when known) is used only to measure; None: those a model this tool infected
    records in its checkpoint, if any (pass () to judge by the reversed triggers alone). `extra_triggers`: more reversed
    triggers for treated labels, used beside the scan's (e.g. the same label reversed with other seeds).
    `baselines` (unlearning): also fine-tune with no trigger, and with the real one when given, to compare.
    `verify`: scan the patched model's treated labels again, beside `verify_others` more, and say no
    backdoor is found only when none of them is flagged any more (neuralcleanse.mitigation.verify).
    Raises NothingToMitigate when the scan flagged nothing and no labels were named: nothing is changed then.

    >>> result = mitigate(model, scan, data, Unlearner())
    >>> result.after.worst_attack_success, result.verdict, result.model
    """
    if isinstance(method, str):
        method = make_method(method)
    if not isinstance(method, Mitigation):
        raise InputError(f"`method` must be one of {', '.join(METHODS)} or a configured Unlearner, InputFilter "
                         f"or NeuronPruner, not {type(method).__name__}")
    start = time.perf_counter()
    backdoors = reversed_backdoors(scan, labels)
    treated = [b.target for b in backdoors]
    stray = sorted({b.target for b in extra_triggers} - set(treated))
    if stray:
        raise InputError(f"extra_triggers name label(s) {stray} that are not treated; treated: {treated}")
    backdoors += list(extra_triggers)
    real = list(known_backdoors(getattr(getattr(model, "info", None), "metadata", {})) if real is None else real)
    judge = real or backdoors  # what attack success is measured with
    device = method.device
    tune, held_out = split_for_mitigation(data, method.seed)
    model.to(device)
    unfitted = copy.deepcopy(method) if baselines else None

    def recheck(patched: nn.Module, every: bool) -> tuple[list, dict]:
        # On the tuning data: the held-out part stays unseen for the measurements and the final rescan. Between
        # rounds only the fresh reversed triggers are wanted: Neural Cleanse alone.
        again = rescan(patched, scan, treated, tune, device, verify_others, detectors=("nc",))
        return again.still_standing(every), again.to_dict()

    fit, curve, capped = tuning_draws(tune, method.seed)
    method.fit_tuning(model, backdoors, Tuning(tune, fit, curve, capped, real, recheck))
    settings, details, fields = method.run_record(held_out, judge)
    settings = {"seed": method.seed, "device": str(device), "tune_samples": len(tune),
                "held_out_samples": len(held_out), "extra_triggers": len(extra_triggers), **settings}
    if unfitted is not None and isinstance(unfitted, Unlearner):
        fields["baselines"] = unfitted.baselines(model, tune, held_out, judge, real)
    result = method.evaluate(held_out, real)
    if verify and method.name != "filter":
        # On data no tuning step saw, with the scan's own settings and rule.
        fields["rescan"] = rescan(fields["model"], scan, treated, held_out, device, verify_others)
    return replace(result, labels=treated, settings=settings, details=details,
                   wall_time=time.perf_counter() - start, **fields)
