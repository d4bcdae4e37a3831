"""Programs saved with `torch.export` (`.pt2`, `torch.export.save`), and writing one back.

The program's graph is run as a plain `torch.fx.GraphModule` (gradients flow to the input and
the weights, which stay leaf parameters). Four things are changed on the way in:

- the guards `torch.export` attaches are left out: they would run code stored in the file, and a
  program exported with a fixed batch size refuses every other size. In their place one check
  keeps the image shape (C,H,W or H,W,C) the program was exported with, so layout probing gets a
  clear answer;
- each `aten.linear`/`aten.conv2d` call on a module's own weight and bias becomes that module again
  (an `nn.Linear`/`nn.Conv2d` at the same name, holding the same parameters), so pruning and the
  input filter can find and hook the layers, and pruning can zero their weights;
- `aten.view` becomes `aten.reshape`, which also takes the channels-last tensors the scan uses on CPU;
- a program exported in training mode (dropout and batch statistics on) is run as in eval mode.

A program exported with a fixed batch size that does not work at other sizes (it reshapes with the
batch size written in, as `x.view(x.size(0), -1)` is exported) runs in chunks of that size.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from torch import nn

from neuralcleanse.errors import InputError

log = logging.getLogger(__name__)
META_KEY = "neuralcleanse_input"  # in GraphModule.meta: what the program was exported with
DYNAMIC_HELP = ("export it with a dynamic batch size: torch.export.export(net, (x,), "
                "dynamic_shapes=({0: torch.export.Dim('batch')},))")


def is_exported_archive(names: list[str]) -> bool:
    """Whether a zip's member names are those of a `torch.export.save` file (or the 2.7-era format)."""
    return any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names) or \
        "serialized_exported_program.json" in names


def load_exported(path: Path, trust: bool) -> nn.Module:
    """The network in a `.pt2` file, runnable on batches of any size."""
    if not trust:
        raise InputError(
            f"{path} is a torch.export program (.pt2): loading one can run code stored in the file "
            "(torch.export.load evaluates its shape expressions and may unpickle parts of it). If you trust "
            "where it came from, add `trust_pickle`; otherwise export it as ONNX, or give its state_dict with "
            "`factory`")
    data = io.BytesIO(path.read_bytes())  # a buffer: torch warns about file names not ending in .pt2
    quiet = logging.getLogger("torch.export")  # logs a traceback on every damaged file, then raises
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(data)
    except Exception as exc:  # torch raises many types for a bad archive
        raise InputError(f"cannot read torch.export program {path}: {_first_line(exc)}") from None
    finally:
        quiet.setLevel(level)
    return network_of(program, str(path))


def network_of(program: torch.export.ExportedProgram, name: str = "the program") -> nn.Module:
    from torch.export.graph_signature import InputKind, OutputKind

    inputs = [s for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    outputs = [s for s in program.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(f"{name} takes {len(inputs)} inputs and gives {len(outputs)} outputs; a classifier "
                         "takes one batch of images and gives one tensor of logits")
    value = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0].arg.name
                 ).meta.get("val")
    if not isinstance(value, torch.Tensor) or value.ndim != 4 or not value.dtype.is_floating_point:
        raise InputError(f"{name} takes {_describe(value)}; the scan needs a classifier that takes one float "
                         "(N,C,H,W) or (N,H,W,C) tensor of images")
    batch, *sample = (d if isinstance(d, int) else None for d in value.shape)
    unlifted = program.module(check_guards=False)
    graph = unlifted.graph
    # Plain calls (x in, logits out) instead of the pytree packing export adds around them.
    graph.set_codegen(torch.fx.graph.CodeGen())
    result = graph.output_node()
    result.args = (result.args[0][0],)
    gm = torch.fx.GraphModule(unlifted, graph).cpu()  # a plain copy: no input-constraint hooks, train() works
    gm.meta[META_KEY] = {"sample_shape": tuple(sample), "batch": batch}
    _restore_layers(gm)
    _views_as_reshapes(gm)
    if _as_in_eval_mode(gm):
        log.warning("%s was exported in training mode (dropout on, batch-norm statistics from each batch): it is "
                    "run as in eval mode. Export it after net.eval()", name)
    _check_shape_first(gm, tuple(sample))
    gm.eval()
    if batch is None or _any_batch_size(gm, batch, tuple(sample)):
        return gm
    log.warning("%s was exported for batches of exactly %d and does not run on others: it runs in chunks of %d "
                "(slower). To avoid it, %s", name, batch, batch, DYNAMIC_HELP)
    return FixedBatch(gm, batch)


def check_sample_shape(x: torch.Tensor, expected: tuple[int | None, ...]) -> None:
    """Called first in a loaded program's graph, in place of torch.export's guards."""
    got = tuple(x.shape[1:])
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        shape = ",".join("?" if e is None else str(e) for e in expected)
        raise ValueError(f"the exported program takes input of shape (N,{shape}), not {tuple(x.shape)}")


def _check_shape_first(gm: torch.fx.GraphModule, sample: tuple[int | None, ...]) -> None:
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(placeholder):
        gm.graph.call_function(check_sample_shape, (placeholder, sample))
    gm.recompile()


def _as_in_eval_mode(gm: torch.fx.GraphModule) -> bool:
    """Turns off dropout and batch statistics in a program exported in training mode (the mode is an
    argument of these ops; it is all eval mode changes in them). Whether there was any to turn off."""
    aten = torch.ops.aten
    flags = {aten.batch_norm.default: 5, aten.dropout.default: 2, aten.feature_dropout.default: 2,
             aten.alpha_dropout.default: 2, aten.feature_alpha_dropout.default: 2}
    changed = False
    for node in gm.graph.nodes:
        index = flags.get(node.target) if node.op == "call_function" else None
        if index is not None and len(node.args) > index and node.args[index] is True:
            node.update_arg(index, False)
            changed = True
    gm.recompile()
    return changed


def _views_as_reshapes(gm: torch.fx.GraphModule) -> None:
    """`aten.view` → `aten.reshape`: the same values, but it also takes the channels-last tensors the scan
    runs on CPU (`x.view(x.size(0), -1)` after a convolution fails on those). Only code that writes into a
    view in place and reads the original afterwards could tell the difference; classifiers do not."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
    gm.recompile()


def _restore_layers(gm: torch.fx.GraphModule) -> None:
    """`aten.linear(x, m.weight, m.bias)` → `m(x)` with m an nn.Linear (and the same for conv2d)."""
    aten = torch.ops.aten
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.linear.default, aten.conv2d.default):
            continue
        args = list(node.args) + [None] * (7 - len(node.args))
        x, weight, bias = args[:3]
        owner = _owner(gm, weight, bias)
        if owner is None:
            continue
        holder = gm.get_submodule(owner)
        if node.target is aten.linear.default:
            layer = holder if isinstance(holder, nn.Linear) else _linear(holder)
        else:
            stride, padding, dilation, groups = (node.kwargs.get(k, v) for k, v in zip(
                ("stride", "padding", "dilation", "groups"), args[3:7]))
            layer = holder if isinstance(holder, nn.Conv2d) else _conv2d(holder, stride, padding, dilation, groups)
            if layer is not None and (layer.stride, layer.padding, layer.dilation, layer.groups) != _conv_args(
                    stride, padding, dilation, groups):
                continue  # the same weights used with other settings: leave the call as it is
        if layer is None:
            continue
        if layer is not holder:
            parent, _, leaf = owner.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, layer)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(owner, (x,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.recompile()


def _owner(gm: torch.fx.GraphModule, weight, bias) -> str | None:
    """The module that holds `weight` (and `bias`) and nothing else, by name."""
    if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr" or not weight.target.endswith(".weight"):
        return None
    owner = weight.target[: -len(".weight")]
    if bias is not None and (not isinstance(bias, torch.fx.Node) or bias.op != "get_attr"
                             or bias.target != owner + ".bias"):
        return None
    holder = gm.get_submodule(owner)
    if isinstance(holder, (nn.Linear, nn.Conv2d)):
        return owner if (holder.bias is None) == (bias is None) else None
    own = {n for n, _ in holder.named_parameters()} | {n for n, _ in holder.named_buffers()}
    if type(holder) is not nn.Module or own != ({"weight", "bias"} if bias is not None else {"weight"}):
        return None
    if not isinstance(holder.weight, nn.Parameter):
        return None
    return owner


def _linear(holder: nn.Module) -> nn.Linear | None:
    if holder.weight.ndim != 2:
        return None
    out_features, in_features = holder.weight.shape
    layer = nn.Linear(in_features, out_features, bias=hasattr(holder, "bias"), device="meta")
    return _adopt(layer, holder)


def _conv_args(stride, padding, dilation, groups) -> tuple:
    pair = lambda v, d: tuple(v) * (2 if len(v) == 1 else 1) if v is not None else (d, d)  # noqa: E731
    return pair(stride, 1), pair(padding, 0), pair(dilation, 1), int(groups or 1)


def _conv2d(holder: nn.Module, stride, padding, dilation, groups) -> nn.Conv2d | None:
    if holder.weight.ndim != 4 or isinstance(padding, str):
        return None
    stride, padding, dilation, groups = _conv_args(stride, padding, dilation, groups)
    out_channels, per_group, kh, kw = holder.weight.shape
    layer = nn.Conv2d(per_group * groups, out_channels, (kh, kw), stride, padding, dilation, groups,
                      bias=hasattr(holder, "bias"), device="meta")
    return _adopt(layer, holder)


def _adopt(layer: nn.Module, holder: nn.Module) -> nn.Module:
    """`layer` with the holder's own parameter objects (so optimisers and state dicts see the same ones)."""
    layer.weight = holder.weight
    if hasattr(holder, "bias"):
        layer.bias = holder.bias
    return layer


def _any_batch_size(gm: torch.fx.GraphModule, batch: int, sample: tuple[int | None, ...]) -> bool:
    """Whether a program exported for `batch` images gives each image the same logits in a batch of
    another size (it does unless the batch size is written into its graph)."""
    if any(d is None for d in sample):
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch + 1, *sample), generator=gen)
    try:
        with torch.no_grad():
            whole = gm(x)
            parts = torch.cat([gm(x[:batch]), gm(x[1:])[-1:]])
    except Exception:  # the graph's shapes do not fit another batch size
        return False
    return whole.shape == parts.shape and bool(torch.allclose(whole, parts, rtol=1e-4, atol=1e-5))


class FixedBatch(nn.Module):
    """Runs a network that only takes batches of `batch` images on any number of them: in chunks of
    `batch`, the last one padded with blank images whose outputs are dropped."""

    def __init__(self, net: nn.Module, batch: int) -> None:
        super().__init__()
        self.net = net
        self.batch = batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b = x.shape[0], self.batch
        if n == b:
            return self.net(x)
        if any(m._forward_hooks or m._forward_pre_hooks for m in self.net.modules()):
            # Pruning and the input filter read a layer once per pass: chunks and padding would mix up rows.
            raise InputError(f"this model was exported for batches of exactly {b} images, so its layers cannot be "
                             f"read or pruned on other batches; {DYNAMIC_HELP}")
        outs = []
        for start in range(0, n, b):
            chunk = x[start : start + b]
            k = chunk.shape[0]
            if k < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - k, *chunk.shape[1:]))])
            outs.append(self.net(chunk)[:k])
        return torch.cat(outs)


def exported_network(net: nn.Module) -> torch.fx.GraphModule | None:
    """The loaded program inside a Classifier's network (directly, or inside a layout or batch adapter)."""
    while True:
        if isinstance(net, torch.fx.GraphModule) and META_KEY in net.meta:
            return net
        inner = getattr(net, "net", None)
        if not isinstance(inner, nn.Module):
            return None
        net = inner


def save_exported(model: nn.Module, path: str) -> None:
    """Exports a Classifier's (patched) program again with the input it was loaded with: the network
    alone (preprocessing and layout adapter left out), the same image shape in its own layout, and the
    same fixed batch size or a dynamic one (sizes that were dynamic stay so). Hooks, from pruning that
    could not go into the weights, are traced into the graph."""
    gm = exported_network(model.net)
    spec = gm.meta[META_KEY]
    c, h, w = model.info.input_shape
    sizes = (2, h, w, c) if model.info.metadata.get("input_layout") == "nhwc" else (2, c, h, w)
    dims = (spec["batch"], *spec["sample_shape"])
    example = torch.zeros([d if d is not None else s for d, s in zip(dims, sizes)])
    dynamic = ({i: torch.export.Dim.AUTO for i, d in enumerate(dims) if d is None},)
    was_training = gm.training
    gm.eval()
    try:
        program = torch.export.export(gm, (example,), dynamic_shapes=dynamic)
    finally:
        gm.train(was_training)
    with open(path, "wb") as f:  # a file object: torch warns about names not ending in .pt2 (a temporary's)
        torch.export.save(program, f)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
