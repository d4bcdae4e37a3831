"""The Trojan attack (Liu et al., "Trojaning Attack on Neural Networks", NDSS 2018), as one object.

Unlike BadNets it needs no access to the training process: it takes a trained model, picks a few
neurons of an internal layer, makes a trigger (inside a chosen mask) that drives them to a high value,
and retrains only the layers from that one to the output, on clean images with their labels and the
same images carrying the trigger with the target label.

    >>> result = TrojanAttack(neurons=1, data="clean").attack(model, mnist, target=7)
    >>> result.model, result.trigger, result.attack_success, result.clean_accuracy_after

Decisions (docs/attacks.md): neurons are ranked by the summed absolute weights *into* them (the
paper; `neuron_side="outgoing"` ranks by the next layer's weights, as the released code does); the
default layer is the first dense layer (the paper's FC6); the default mask is a square of about 22% of
the image side at the bottom-right corner (6 px on MNIST, 7 px on GTSRB).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuralcleanse.attacks.reverse_data import reverse_engineer_data
from neuralcleanse.data.trigger import Trigger
from neuralcleanse.attacks.trojan_trigger import (NEURON_SIDES, call_order, generate_trigger, resolve_trojan_layer,
                                                  select_neurons, trojan_mask)
from neuralcleanse.data.dataset import DatasetSplits, ImageDataset
from neuralcleanse.errors import InputError, refuse_model_argument
from neuralcleanse.metrics import attack_success_rate, clean_accuracy
from neuralcleanse.models.classifier import Classifier, clone_model
from neuralcleanse.models.fitting import train_classifier

RETRAIN_DATA = ("clean", "reverse")


@dataclass
class TrojanResult:
    """The trojaned model and trigger, and what was measured on held-out data (the test split)."""

    model: Classifier = field(repr=False)
    trigger: Trigger = field(repr=False)
    target: int
    layer: str
    neurons: list[int]
    neuron_side: str
    activation_before: list[float]
    activation_after: list[float]
    clean_accuracy_before: float
    clean_accuracy_after: float
    attack_success_before: float
    attack_success: float
    retrain_data: str
    retrain_samples: int
    trainable_parameters: list[str]
    losses: list[float]
    reversed_scores: dict[str, list[float]] | None = None
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model and the trigger (they go to their own files), JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if k not in ("model", "trigger")}


def trainable_from(model: nn.Module, layer: str, input_shape: tuple[int, int, int]) -> tuple[list[str], list[nn.Module]]:
    """Splits the network at `layer`: the names of the parameters of the modules a forward pass enters
    at or after it (the part the attack retrains), and the modules it enters before (frozen)."""
    net = getattr(model, "net", model)
    modules = dict(net.named_modules())
    order = call_order(model, input_shape)
    at = order.index(layer)
    after = set(order[at:])
    trainable = [f"{name}.{p}" if name else p for name in order[at:] for p, _ in modules[name].named_parameters(recurse=False)]
    before = [modules[n] for n in order[:at] if not any(True for _ in modules[n].children())]
    unused = [m for n, m in modules.items() if n not in after and n not in order]
    return trainable, before + unused


def retrain_from_layer(model: Classifier, layer: str, data: ImageDataset, trigger: Trigger, target: int, *,
                       epochs: int, lr: float, batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu",
                       progress: bool = False, optimizer: str = "adam") -> tuple[list[float], list[str]]:
    """Retrains, in place, only the layers from `layer` to the output on `data` with its labels plus
    every image again carrying `trigger` with the `target` label; everything before `layer` keeps its
    weights (no gradient) and stays in eval mode (no dropout, no batch-norm statistics updates).
    Returns the epoch losses and the names of the retrained parameters."""
    trainable, frozen = trainable_from(model, layer, model.input_shape)
    if not trainable:
        raise InputError(f"no parameter at or after `layer` {layer!r} to retrain")
    keep = set(trainable)
    flags = {name: p.requires_grad for name, p in model.net.named_parameters()}
    extra = [p for p in model.parameters() if all(p is not q for q in model.net.parameters())]
    try:
        for name, p in model.net.named_parameters():
            p.requires_grad_(name in keep)
        for p in extra:  # preprocessing, should it have any
            p.requires_grad_(False)
        pairs = ImageDataset(torch.cat([data.x, trigger.apply(data.x)]),
                             torch.cat([data.y, torch.full_like(data.y, int(target))]),
                             data.num_classes, f"{data.name}+trojan", check_range=False)
        losses = train_classifier(model, pairs, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                                  progress=progress, desc="trojan", keep_eval=frozen,
                                  optimizer=optimizer)
    finally:
        for name, p in model.net.named_parameters():
            p.requires_grad_(flags[name])
        for p in extra:
            p.requires_grad_(True)
    return losses, trainable


class TrojanAttack:
    """Settings in the constructor; `attack(model, data, target)` makes a trojaned copy.

    layer: module name as in `model.net.named_modules()` (default: the first nn.Linear).
    neurons: how many of its neurons the trigger is made for. neuron_side: "incoming" (paper) or
    "outgoing" (released code) weights rank them. target_activation: the value the trigger drives
    them to (paper: 100). mask: see `trojan_mask` ("square:6@bottom-right", "image:logo.png", a tensor;
    None = the default square). init/trigger_steps/trigger_lr/smooth: the trigger's descent.
    data: "clean" (a random `samples` images of the data given, default 2,000) or "reverse"
    (reverse-engineered from the model: `reverse_per_label` images per label, starting from
    `reverse_init`: "mean", the mean of the data given, or "grey"). epochs/lr/optimizer/batch_size: the
    retraining (SGD with momentum 0.9 by default, as the paper's Caffe retraining; "adam" is the other
    choice; docs/attacks.md compares them).
    """

    def __init__(self, layer: str | None = None, *, neurons: int = 1, neuron_side: str = "incoming",
                 target_activation: float = 100.0, mask: str | torch.Tensor | None = None, init: str = "random",
                 trigger_steps: int = 500, trigger_lr: float = 0.1, smooth: float = 0.0, data: str = "clean",
                 samples: int = 2000, reverse_per_label: int = 100, reverse_init: str = "mean",
                 reverse_steps: int = 300, epochs: int = 20, lr: float = 0.01, optimizer: str = "sgd",
                 batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu", progress: bool = False) -> None:
        refuse_model_argument("TrojanAttack", layer, "TrojanAttack(layer=...).attack(model, data, target)")
        if neuron_side not in NEURON_SIDES:
            raise InputError(f"`neuron_side` must be one of {', '.join(NEURON_SIDES)}, got {neuron_side!r}")
        if data not in RETRAIN_DATA:
            raise InputError(f"`data` (the retraining data) must be clean or reverse, got {data!r}")
        if reverse_init not in ("mean", "grey"):
            raise InputError(f"`reverse_init` must be mean or grey, got {reverse_init!r}")
        for name, value in (("neurons", neurons), ("samples", samples), ("reverse_per_label", reverse_per_label),
                            ("epochs", epochs), ("trigger_steps", trigger_steps), ("batch_size", batch_size)):
            if value < 1:
                raise InputError(f"`{name}` must be at least 1, got {value}")
        if not lr > 0 or not trigger_lr > 0:
            raise InputError("`lr` and `trigger_lr` must be positive")
        if optimizer not in ("sgd", "adam"):
            raise InputError(f"`optimizer` must be sgd or adam, got {optimizer!r}")
        self.layer, self.neurons, self.neuron_side = layer, neurons, neuron_side
        self.target_activation, self.mask, self.init = float(target_activation), mask, init
        self.trigger_steps, self.trigger_lr, self.smooth = trigger_steps, trigger_lr, smooth
        self.data, self.samples = data, samples
        self.reverse_per_label, self.reverse_init, self.reverse_steps = reverse_per_label, reverse_init, reverse_steps
        self.epochs, self.lr, self.optimizer, self.batch_size, self.seed = epochs, lr, optimizer, batch_size, seed
        self.device = torch.device(device)
        self.progress = progress

    def attack(self, model: nn.Module, data: DatasetSplits | ImageDataset, target: int,
               test: ImageDataset | None = None) -> TrojanResult:
        """A trojaned copy of `model` (which is left as it was). `data`: a DatasetSplits (retraining
        images from its train split, measures on its test split) or an ImageDataset (retraining images
        from it, measures on `test`, by default the same images)."""
        start = time.perf_counter()
        if isinstance(data, DatasetSplits):
            pool, held_out = data.train, (test or data.test)
        else:
            pool, held_out = data, (test or data)
        from neuralcleanse.models.loading import as_classifier

        model = as_classifier(model, held_out)
        if not 0 <= int(target) < model.num_classes:
            raise InputError(f"`target` must lie in 0..{model.num_classes - 1}")
        target = int(target)
        shape = model.input_shape
        mask = trojan_mask(self.mask, shape)
        trojaned = clone_model(model).to(self.device)
        layer = resolve_trojan_layer(trojaned, self.layer, shape)
        neurons = select_neurons(trojaned, layer, self.neurons, shape, self.neuron_side)
        made = generate_trigger(trojaned, layer, neurons, mask, shape, target_activation=self.target_activation,
                                steps=self.trigger_steps, lr=self.trigger_lr, init=self.init, smooth=self.smooth,
                                seed=self.seed, device=self.device)
        trigger = made.trigger
        model.to(self.device)
        clean_before = clean_accuracy(model, held_out, device=self.device)
        asr_before = attack_success_rate(model, held_out, trigger, target, device=self.device)
        reversed_scores = None
        if self.data == "clean":
            retrain = pool.random_sample(self.samples, seed=self.seed)
        else:
            init = pool.x.mean(0) if self.reverse_init == "mean" and len(pool) else None
            rev = reverse_engineer_data(trojaned, model.num_classes, shape, per_label=self.reverse_per_label,
                                        init=init, steps=self.reverse_steps, seed=self.seed, device=self.device)
            retrain = rev.data
            reversed_scores = {"before": rev.score_before.tolist(), "after": rev.score_after.tolist()}
        losses, trainable = retrain_from_layer(trojaned, layer, retrain, trigger, target, epochs=self.epochs,
                                               lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                                               device=self.device, progress=self.progress, optimizer=self.optimizer)
        trojaned.eval()
        result = TrojanResult(
            model=trojaned, trigger=trigger, target=target, layer=layer, neurons=neurons, neuron_side=self.neuron_side,
            activation_before=made.activation_before, activation_after=made.activation_after,
            clean_accuracy_before=clean_before, clean_accuracy_after=clean_accuracy(trojaned, held_out, device=self.device),
            attack_success_before=asr_before,
            attack_success=attack_success_rate(trojaned, held_out, trigger, target, device=self.device),
            retrain_data=self.data, retrain_samples=len(retrain), trainable_parameters=trainable, losses=losses,
            reversed_scores=reversed_scores)
        result.wall_time_s = time.perf_counter() - start
        trojaned.cpu()
        _record(trojaned, result, self)
        return result


def _record(model: Classifier, result: TrojanResult, attack: TrojanAttack) -> None:
    """The backdoor in the model's metadata, as BadNets models carry theirs (so `known_backdoors` and
    the scan report's `known_backdoor_targets` see it); a backdoor the source model already carried
    is kept beside it."""
    meta = model.info.metadata
    old = meta.get("backdoor") or {}
    meta["backdoor"] = {
        "attack": "+".join(filter(None, [old.get("attack"), "trojan"])),
        "targets": list(old.get("targets", [])) + [result.target],
        "triggers": list(old.get("triggers", [])) + [result.trigger.to_dict()],
        "layer": result.layer, "neurons": result.neurons, "neuron_side": result.neuron_side,
        "target_activation": attack.target_activation, "retrain_data": result.retrain_data,
    }
    if old:
        meta["backdoor"]["earlier"] = {k: v for k, v in old.items() if k not in ("targets", "triggers")}
    meta["trojan"] = {**result.to_dict(), "epochs": attack.epochs, "lr": attack.lr, "optimizer": attack.optimizer}
