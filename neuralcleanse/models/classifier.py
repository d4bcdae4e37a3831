"""A model as the tool sees it: raw [0,1] NCHW pixels in, logits out, preprocessing inside."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuralcleanse.data.preprocessing import Preprocessing


class Classifier(nn.Module):
    """Wraps a network with its preprocessing so triggers can be stamped on raw pixels.

    `info` carries what a checkpoint needs to rebuild and describe the model: architecture
    name and arguments, label count, input shape, preprocessing, and free-form metadata
    (training figures, the real trigger of a model we infected ourselves).
    """

    def __init__(self, net: nn.Module, info: "ModelInfo") -> None:
        super().__init__()
        self.preprocess = info.preprocessing.module()
        self.net = net
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.info.input_shape


@dataclass
class ModelInfo:
    num_classes: int
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "neuralcleanse"
    metadata: dict[str, Any] = field(default_factory=dict)


def script_net(model: nn.Module) -> torch.jit.ScriptModule | None:
    """The TorchScript network inside a Classifier (directly, or inside a layout adapter)."""
    net = getattr(model, "net", None)
    for candidate in (net, getattr(net, "net", None)):
        if isinstance(candidate, torch.jit.ScriptModule):
            return candidate
    return None


def clone_model(model: nn.Module) -> nn.Module:
    """An independent copy to patch. TorchScript networks are copied through serialisation:
    `copy.deepcopy` gives them parameters that are not leaves, which no optimiser accepts. Everything
    else is deep-copied, torch.export programs (`fx.GraphModule`s, see formats/exported.py) included: their
    copies keep leaf parameters, the layers' hooks and what the program was exported with (`meta`)."""
    import copy
    import io

    script = script_net(model)
    if script is None:
        return copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.jit.save(script, buffer)
    buffer.seek(0)
    device = next((p.device for p in script.parameters()), torch.device("cpu"))
    loaded = torch.jit.load(buffer, map_location=device)
    net = loaded if model.net is script else type(model.net)(loaded)
    clone = Classifier(net, copy.deepcopy(model.info))
    clone.train(model.training)
    return clone
