"""Networks that take channels-last (NHWC) images: telling them apart, and feeding them the tool's NCHW."""
from __future__ import annotations

import torch
from torch import nn


class ChannelsLastInput(nn.Module):
    """Lets a network that takes NHWC input be fed the tool's NCHW tensors."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 2, 3, 1))


def first_conv_in_channels(net: nn.Module) -> int | None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def detect_layout(net: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """"nchw" or "nhwc": the layout whose probe the network accepts, the first convolution's input
    channels deciding when both pass (a square C×C image, say)."""
    c, h, w = input_shape
    ok = {}
    for layout, shape in (("nchw", (2, c, h, w)), ("nhwc", (2, h, w, c))):
        try:
            with torch.no_grad():
                out = net(torch.zeros(shape))
            ok[layout] = out.ndim == 2
        except Exception:  # the wrong layout fails inside the user's network in any way
            ok[layout] = False
    if ok["nchw"] and ok["nhwc"]:
        return "nchw" if first_conv_in_channels(net) in (None, c) else "nhwc"
    if ok["nhwc"]:
        return "nhwc"
    return "nchw"
