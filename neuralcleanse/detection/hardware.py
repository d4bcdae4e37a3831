"""How the scan fits the hardware it runs on: how many labels share a pass, which memory layout
the CPU's kernels prefer, and the model prepared for both. Measured choices, kept apart from the
optimisation itself so changing one cannot change the other's results."""
from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import nn


def choose_block_size(model: nn.Module, input_shape: Sequence[int], batch_size: int, num_labels: int,
                      device: torch.device) -> int:
    """How many labels to optimise in one pass.

    GPU: as many as half the free memory holds (estimated from one image's activations).
    CPU: bigger is not faster: past a few hundred images the activations leave the caches
    and throughput falls (measured: GTSRB net 800 images/s at 64-128 images per pass, 370 at
    1,376). So the candidates that fit in memory are timed briefly and the fastest is kept.
    """
    per_image = _activation_bytes_per_image(model, input_shape, device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(num_labels, free * 0.5 / max(per_image, 1) // batch_size)))
    max_images = min(_available_memory() * 0.25 / max(per_image, 1), 1024)
    max_k = int(max(1, min(num_labels, max_images // batch_size)))
    candidates = sorted({k for k in (1, 2, 4, 8, 16, 32) if k <= max_k} | {min(max_k, 32)})
    return max(candidates, key=lambda k: _images_per_second(model, input_shape, k * batch_size, device))


def _images_per_second(model: nn.Module, input_shape: Sequence[int], batch: int, device: torch.device,
                       repeats: int = 2) -> float:
    x = torch.rand((batch, *input_shape), device=device)
    x = to_preferred_layout(x, model).requires_grad_(True)
    torch.autograd.grad(model(x).logsumexp(1).sum(), x)  # warm-up: allocations, kernel choice
    start = time.perf_counter()
    for _ in range(repeats):
        torch.autograd.grad(model(x).logsumexp(1).sum(), x)
    return repeats * batch / (time.perf_counter() - start)


_CHANNELS_LAST = "_neuralcleanse_channels_last"


def to_preferred_layout(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Channels-last where `prepare_model` found the model runs on it: on CPU oneDNN's convolutions
    run 1.2-1.5x faster so (measured, GTSRB net)."""
    if getattr(model, _CHANNELS_LAST, False) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: nn.Module, device: torch.device, probe: torch.Tensor | None = None) -> nn.Module:
    """The model on `device`, in eval mode, its weights frozen; on CPU in channels-last when it
    runs on a channels-last `probe` batch. Networks that `view` their conv output as
    (N, -1) do not (view needs contiguous memory): they keep their own layout."""
    model = model.to(device).eval()
    setattr(model, _CHANNELS_LAST, False)
    if device.type == "cpu" and probe is not None and probe.ndim == 4:
        try:
            model = model.to(memory_format=torch.channels_last)
            with torch.no_grad():
                model(probe.to(device).contiguous(memory_format=torch.channels_last))
            setattr(model, _CHANNELS_LAST, True)
        except Exception:  # scripted models that refuse, views of channels-last tensors
            model = model.to(memory_format=torch.contiguous_format)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _activation_bytes_per_image(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> int:
    total = 0
    hooked = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    handles = []
    try:
        for m in model.modules():
            # Scripted modules run no Python hooks (and refuse them); they are estimated below.
            if not list(m.children()) and not isinstance(m, torch.jit.ScriptModule):
                handles.append(m.register_forward_hook(hook))
                hooked += 1
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    except Exception:
        total = 0
    finally:
        for h in handles:
            h.remove()
    if total <= 2 * math.prod(input_shape) or hooked <= 1:
        # Only the input passed through hooked layers: a scripted network; assume a mid-sized CNN.
        total = 64 * int(math.prod(input_shape))
    # outputs, their gradients and saved inputs, plus the stamped image itself
    return int((3 * total + 2 * math.prod(input_shape)) * 4)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30
