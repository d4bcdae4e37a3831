"""ONNX files, converted to PyTorch with onnx2torch (the scan needs gradients, which ONNX runtimes lack), and a
patched network written back to ONNX."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from neuralcleanse.errors import InputError

ONNX_HELP = ("ONNX models need two extra packages: pip install 'onnx>=1.21' && pip install --no-deps "
             "onnx2torch==1.5.15 (--no-deps: onnx2torch declares torchvision, which it only needs for detection "
             "ops a classifier does not use)")


def _import_onnx2torch():
    """onnx2torch imports torchvision at the top of its NMS and RoIAlign converters only. Without
    torchvision installed (this project keeps it out), it is imported with a stand-in whose two
    functions fail loudly, so a classifier converts and a detector says what it lacks."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("onnx2torch") is None or importlib.util.find_spec("onnx") is None:
        raise InputError(ONNX_HELP)
    if importlib.util.find_spec("torchvision") is not None:
        import onnx2torch
        return onnx2torch

    def missing(*_a, **_k):
        raise InputError("this ONNX model uses NMS or RoIAlign, which need torchvision; it is not a classifier")

    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms, ops.roi_align, stub.ops = missing, missing, ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops
    try:
        import onnx2torch
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return onnx2torch


def load_onnx(path: Path) -> nn.Module:
    """An ONNX file converted to a PyTorch module (the scan needs gradients, which ONNX runtimes lack)."""
    onnx2torch = _import_onnx2torch()
    try:
        net = onnx2torch.convert(str(path))
    except Exception as exc:  # malformed files and unsupported operators raise many types
        raise InputError(f"cannot convert ONNX model {path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    return net.eval()


def save_onnx(net: nn.Module, path: str | Path, sample_shape: tuple[int, ...]) -> None:
    """`net` as an ONNX file taking batches of `sample_shape` (the layout it was loaded with)."""
    dummy = torch.zeros(1, *sample_shape)
    torch.onnx.export(net.eval(), (dummy,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
