"""A network's neurons, perturbed or masked one by one: what the neuron-noise test and adversarial neuron
pruning (ANP) work on.

Which neurons: the channels of every affine batch-norm layer when the network has any (ANP's and BAN's
choice: a batch-norm channel scales and shifts one feature map); otherwise the output channels of every
convolutional and dense layer but the last one, which gives the logits. Either way a neuron's output is
y = w·x̂ + b, and the perturbed network computes (m + δ)·(y − b) + (1 + ξ)·b: its weight scaled by a mask
m (1: kept, 0: pruned) plus a relative noise δ, its bias by a relative noise ξ. This goes through forward
hooks, so the weights themselves are never touched and any eager `nn.Module` works; TorchScript networks,
which run no hooks, are refused with a clear message.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from neuralcleanse.models.layers import hookable_modules

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CHANNEL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
REFUSAL = ("neuron noise and neuron pruning reach the neurons through hooks, which TorchScript networks do not run; "
           "give the model as a neuralcleanse checkpoint, an ONNX file or weights with its factory")


def neuron_layers(model: nn.Module) -> tuple[list[str], str]:
    """The names of the layers whose neurons are perturbed, and which kind they are ("batch-norm" or
    "conv/dense"); an empty list when the network has neither."""
    modules = hookable_modules(model, REFUSAL)
    norms = [n for n, m in modules.items() if isinstance(m, NORM_LAYERS) and m.affine]
    if norms:
        return norms, "batch-norm"
    channels = [n for n, m in modules.items() if isinstance(m, CHANNEL_LAYERS)]
    return channels[:-1], "conv/dense"


def _channels(module: nn.Module) -> int:
    return int(module.num_features if isinstance(module, NORM_LAYERS) else module.weight.shape[0])


@dataclass
class Neurons:
    """Per layer (by name), the mask, the weight noise δ and the bias noise ξ of its neurons: tensors that
    can require gradients. `kind` says which layers they are (see the module's docstring)."""

    layers: list[str]
    kind: str
    mask: dict[str, torch.Tensor]
    weight_noise: dict[str, torch.Tensor]
    bias_noise: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: nn.Module, device: torch.device | str = "cpu") -> "Neurons":
        layers, kind = neuron_layers(model)
        modules = dict(getattr(model, "net", model).named_modules())
        sizes = {name: _channels(modules[name]) for name in layers}
        zeros = lambda: {n: torch.zeros(c, device=device) for n, c in sizes.items()}  # noqa: E731
        return cls(layers, kind, {n: torch.ones(c, device=device) for n, c in sizes.items()}, zeros(), zeros())

    @property
    def count(self) -> int:
        return sum(len(m) for m in self.mask.values())

    def draw_noise(self, eps: float, generator: torch.Generator | None = None) -> None:
        """Both noises uniform in [−eps, eps], as ANP and BAN start them (in place: the tensors stay the same
        objects, so a list of them taken earlier still holds them)."""
        with torch.no_grad():
            for t in self.noise_tensors():
                t.copy_(torch.rand(t.shape, generator=generator) * 2 * eps - eps)

    def clear_noise(self) -> None:
        with torch.no_grad():
            for t in self.noise_tensors():
                t.zero_()

    def noise_tensors(self) -> list[torch.Tensor]:
        return [*self.weight_noise.values(), *self.bias_noise.values()]

    @contextlib.contextmanager
    def applied(self, model: nn.Module, noise: bool = True) -> Iterator[None]:
        """Runs `model` with the mask (and, with `noise`, the noises) on its neurons inside the block."""
        modules = dict(getattr(model, "net", model).named_modules())
        handles = []
        for name in self.layers:
            module = modules[name]
            handles.append(module.register_forward_hook(self._hook(name, module, noise)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, name: str, module: nn.Module, noise: bool):
        def perturb(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
            shape = (1, -1, *([1] * (out.ndim - 2)))
            scale = self.mask[name] + self.weight_noise[name] if noise else self.mask[name]
            bias = module.bias
            if bias is None:
                return out * scale.view(shape)
            b = bias.view(shape)
            shift = (1 + self.bias_noise[name]).view(shape) if noise else 1
            return scale.view(shape) * (out - b) + shift * b

        return perturb


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Runs the block in training mode, so batch-norm layers normalise with each batch's own statistics (what
    ANP and BAN optimise under: scaling a channel is then undone by the next batch-norm, as it was when the
    network was trained), and puts back the running statistics and the mode afterwards."""
    was_training = model.training
    kept = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in kept:
                    buffer.copy_(kept[name])
        model.train(was_training)
