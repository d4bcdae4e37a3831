"""Reading and silencing the units of one layer: what the input filter and pruning work on.

A layer's *units* are its features along dimension 1: neurons of a dense layer, channels of a
convolution (averaged over space when read). Both jobs go through forward hooks, so they work
on any eager `nn.Module`; TorchScript modules ignore or refuse hooks, hence the clear error.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from neuralcleanse.errors import InputError

INPUT, OUTPUT = "input", "output"


@dataclass(frozen=True)
class FeatureLayer:
    """A module of the classifier's network, by its name in `net.named_modules()`, and which
    side of it holds the units: the default layer is the *input* of the last dense layer (the
    paper's second-to-last layer, after its activation); a layer the user names is read at its
    output."""

    name: str
    side: str = OUTPUT

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "side": self.side}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> "FeatureLayer":
        return cls(str(d["name"]), str(d.get("side", OUTPUT)))


def _net(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)


def resolve_layer(model: nn.Module, name: str | None = None) -> FeatureLayer:
    """The layer `name` (as listed by `net.named_modules()`, with or without a leading "net."),
    or by default the input of the last `nn.Linear` in the network."""
    modules = hookable_modules(
        model, "the input filter and pruning read a layer's activations through hooks, which TorchScript "
        "models do not run; give the model as a neuralcleanse checkpoint (or choose `method` unlearn)")
    if name is None:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise InputError("the model has no dense (nn.Linear) layer to take the default feature layer from; "
                             "name one with `layer`")
        return FeatureLayer(linears[-1], INPUT)
    return FeatureLayer(module_name(modules, name), OUTPUT)


def hookable_modules(model: nn.Module, refusal: str) -> dict[str, nn.Module]:
    """The network's modules by name; a TorchScript network (which runs no hooks) is refused with `refusal`."""
    net = _net(model)
    if isinstance(net, torch.jit.ScriptModule) or isinstance(getattr(net, "net", None), torch.jit.ScriptModule):
        raise InputError(refusal)
    return dict(net.named_modules())


def module_name(modules: dict[str, nn.Module], name: str, argument: str = "layer") -> str:
    """`name` as a key of `modules`, with or without a leading "net."; an unknown one lists the layers."""
    key = name if name in modules else (name[4:] if name.startswith("net.") else name)
    if key not in modules or key == "":
        known = ", ".join(f"{n} ({type(m).__name__})" for n, m in modules.items() if n)
        raise InputError(f"unknown {argument} {name!r}; the model's layers are: {known}")
    return key


def _module(model: nn.Module, layer: FeatureLayer) -> nn.Module:
    modules = dict(_net(model).named_modules())
    if layer.name not in modules:
        raise InputError(f"the model has no layer {layer.name!r}")
    return modules[layer.name]


def unit_values(t: torch.Tensor) -> torch.Tensor:
    """(N, U, ...) activations to (N, U): channels of a convolution are averaged over space."""
    return t.flatten(2).mean(2) if t.ndim > 2 else t


@contextlib.contextmanager
def capture_units(model: nn.Module, layer: FeatureLayer, detach: bool = True) -> Iterator[list[torch.Tensor]]:
    """Collects the layer's (N, U) unit values of every forward pass run inside the block;
    `detach=False` keeps their gradient graph (the Trojan attack descends on them)."""
    seen: list[torch.Tensor] = []
    module = _module(model, layer)
    keep = (lambda t: t.detach()) if detach else (lambda t: t)
    if layer.side == INPUT:
        handle = module.register_forward_pre_hook(lambda _m, args: seen.append(keep(unit_values(args[0]))))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: seen.append(keep(unit_values(out))))
    try:
        yield seen
    finally:
        handle.remove()


def silence_units(model: nn.Module, layer: FeatureLayer, units: torch.Tensor | list[int]) -> torch.utils.hooks.RemovableHandle:
    """Zeroes the given units of `layer` in every later forward pass (pruning). Returns the hook's
    handle; a checkpoint records the units so loading re-applies them (see `checkpoint.py`)."""
    module = _module(model, layer)
    index = torch.as_tensor(units, dtype=torch.long)

    def zero(t: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(t.shape[1], dtype=t.dtype, device=t.device)
        keep[index.to(t.device)] = 0
        return t * keep.view(1, -1, *([1] * (t.ndim - 2)))

    if layer.side == INPUT:
        return module.register_forward_pre_hook(lambda _m, args: (zero(args[0]), *args[1:]))
    return module.register_forward_hook(lambda _m, _args, out: zero(out))


def can_bake(model: nn.Module, layer: FeatureLayer) -> bool:
    """Whether pruning `layer` can live in its weights (and so in any export of them)."""
    module = _module(model, layer)
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and (
        layer.side == OUTPUT or getattr(module, "groups", 1) == 1)


def _bake(module: nn.Module, side: str, index: torch.Tensor) -> bool:
    """Zeroes the weights that carry the units, when the module is a dense or conv layer: the same
    function as silencing them, and it travels with the weights (state_dict, TorchScript)."""
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return False
    groups = getattr(module, "groups", 1)
    if side == INPUT and groups != 1:
        return False
    with torch.no_grad():
        if side == INPUT:
            module.weight[:, index.to(module.weight.device)] = 0
        else:
            module.weight[index.to(module.weight.device)] = 0
            if module.bias is not None:
                module.bias[index.to(module.bias.device)] = 0
    return True


def prune_units(model: nn.Module, layer: FeatureLayer, units: torch.Tensor | list[int]) -> None:
    """Silences `units` for good. Units read at a dense or convolutional layer are zeroed in its
    weights; any other layer keeps a hook. A Classifier's metadata records the units either way,
    so its checkpoint re-applies a hook on load."""
    index = torch.as_tensor(units, dtype=torch.long)
    if not _bake(_module(model, layer), layer.side, index):
        silence_units(model, layer, index)
    info = getattr(model, "info", None)
    if info is not None:
        info.metadata.setdefault("pruning", []).append({"layer": layer.to_dict(), "units": index.tolist()})


def reapply_pruning(model: nn.Module, records: list[dict]) -> None:
    """Zeroing baked weights again changes nothing; layers that needed a hook get it back."""
    for record in records:
        layer = FeatureLayer.from_dict(record["layer"])
        index = torch.as_tensor(record["units"], dtype=torch.long)
        if not _bake(_module(model, layer), layer.side, index):
            silence_units(model, layer, index)
