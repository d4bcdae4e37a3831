"""Logits for the trigger search, from networks that end in a softmax.

The search minimises cross-entropy on the model's outputs, which assumes logits. On a network
that returns probabilities, softmax(probabilities) is nearly uniform and the loss barely moves;
on one that returns a clamped log-softmax (Keras habit: log(clip(p, 1e-7, 1))), the gradient is
zero wherever the clamp bites. So the search uses, in this order of preference:

1. the input of the network's final softmax ("cut"): the logits themselves, found by a forward
   hook on a trailing nn.Softmax/nn.LogSoftmax module, or by tracing the network with torch.fx and
   dropping a trailing softmax call;
2. the log of the probabilities ("log"), which gives the same cross-entropy as the logits
   wherever the probabilities have not underflowed.

Predictions (argmax) are the same on all three, so verdicts and success rates are unaffected;
only the gradient the search follows changes.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.models.checks import output_kind
from neuralcleanse.models.classifier import Classifier, ModelInfo

log = logging.getLogger(__name__)

_SOFTMAXES = (nn.Softmax, nn.LogSoftmax)
_SOFTMAX_FUNCTIONS = {torch.softmax, torch.log_softmax, torch.nn.functional.softmax, torch.nn.functional.log_softmax}
_TINY = 1e-30


class _InputOfFinalSoftmax(nn.Module):
    """Runs the network and returns what went into the softmax module that produced its output.
    The hook lives for one forward pass only, so the user's network is left as it was."""

    def __init__(self, net: nn.Module, softmax: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._softmax = [softmax]  # a list, so it is not registered twice as a child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        handle = self._softmax[0].register_forward_hook(lambda _m, args, out: seen.append((args[0], out)))
        try:
            out = self.net(x)
        finally:
            handle.remove()
        for logits, produced in reversed(seen):
            if produced is out:
                return logits
        raise RuntimeError("the softmax module did not produce the network's output")


class _LogOfProbabilities(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.net(x).clamp_min(_TINY))


def logits_for_search(model: Classifier, output_kind: str, probe: torch.Tensor) -> tuple[Classifier, str]:
    """A Classifier sharing `model`'s weights whose outputs the search can use as logits, and how
    they were obtained: "as is", "cut before softmax" or "log of probabilities"."""
    if output_kind == "logits":
        return model, "as is"
    net = model.net
    for candidate in (_cut_by_hook(net, probe), _cut_by_tracing(net, probe)):
        if candidate is not None and _same_predictions(net, candidate, probe):
            return _rewrap(model, candidate), "cut before softmax"
    if output_kind == "probabilities":
        log.info("the network's softmax could not be cut off; the search uses the log of its probabilities")
        return log_of_probabilities(model), "log of probabilities"
    return model, "as is"  # log-probabilities: cross-entropy on them equals cross-entropy on the logits


def log_of_probabilities(model: Classifier) -> Classifier:
    """A Classifier sharing `model`'s weights that returns the log of its probabilities."""
    return _rewrap(model, _LogOfProbabilities(model.net))


def _cut_by_hook(net: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    softmaxes = [m for m in net.modules() if isinstance(m, _SOFTMAXES)]
    for softmax in reversed(softmaxes):
        wrapped = _InputOfFinalSoftmax(net, softmax)
        try:
            with torch.no_grad():
                wrapped(probe)
        except RuntimeError:
            continue
        return wrapped
    return None


def _cut_by_tracing(net: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """torch.fx graph of `net` with a trailing softmax/log_softmax call (function or method) removed."""
    if isinstance(net, torch.jit.ScriptModule):
        return None
    try:
        from torch import fx

        graph_module = fx.symbolic_trace(net)
    except Exception:  # many networks do not trace symbolically; the caller falls back
        return None
    output = next(n for n in graph_module.graph.nodes if n.op == "output")
    last = output.args[0]
    if not isinstance(last, fx.Node):
        return None
    is_softmax = ((last.op == "call_function" and last.target in _SOFTMAX_FUNCTIONS)
                  or (last.op == "call_method" and last.target in ("softmax", "log_softmax")))
    if not is_softmax:
        return None
    output.args = (last.args[0],)
    graph_module.graph.erase_node(last)
    graph_module.recompile()
    return graph_module


def _same_predictions(net: nn.Module, candidate: nn.Module, probe: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            return bool((net(probe).argmax(1) == candidate(probe).argmax(1)).all())
    except Exception:
        return False


def _rewrap(model: Classifier, net: nn.Module) -> Classifier:
    info = model.info
    wrapped = Classifier(net, ModelInfo(info.num_classes, info.input_shape, info.preprocessing, info.arch,
                                        info.arch_kwargs, info.source, info.metadata))
    wrapped.preprocess = model.preprocess
    return wrapped.train(model.training)


def logits_view(model: nn.Module, data: ImageDataset) -> nn.Module:
    """`model`, or a view sharing its weights whose outputs are logits: cross-entropy on a network
    that ends in a softmax would treat probabilities as logits and barely move it. Falls back to the
    log of the probabilities when the softmax cannot be cut off without copying the weights."""
    if not isinstance(model, Classifier):
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probe = data.x[:64].to(device)
        kind = output_kind(model(probe))
        view = model if kind == "logits" else logits_for_search(model, kind, model.preprocess(probe[:8]))[0]
    model.train(was_training)
    if view is not model and {id(p) for p in view.parameters()} != {id(p) for p in model.parameters()}:
        view = log_of_probabilities(model)
    return view
