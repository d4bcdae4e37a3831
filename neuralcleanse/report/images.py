"""Pictures of reversed triggers and the chart of their norms."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from neuralcleanse.files import write_atomic

MIN_SIDE = 112  # small masks (28 px) are upscaled so a person can see them


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """(H,W) or (C,H,W) in [0,1] to an upscaled PIL image (nearest, so pixels stay sharp)."""
    arr = t.detach().cpu().float().clamp(0, 1).numpy()
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    img = Image.fromarray(np.rint(arr * 255).astype(np.uint8))
    factor = max(1, -(-MIN_SIDE // min(img.size)))
    return img.resize((img.width * factor, img.height * factor), Image.NEAREST)


def save_image(t: torch.Tensor, path: str | Path) -> Path:
    img = tensor_to_image(t)
    return write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))


def save_trigger_images(mask: torch.Tensor, pattern: torch.Tensor, folder: str | Path, label: int) -> dict[str, str]:
    """mask, pattern and mask·pattern (what the trigger adds) as PNGs; returns their file names."""
    folder = Path(folder)
    names = {
        "mask": f"label_{label:04d}_mask.png",
        "pattern": f"label_{label:04d}_pattern.png",
        "fusion": f"label_{label:04d}_fusion.png",
    }
    save_image(mask, folder / names["mask"])
    save_image(pattern, folder / names["pattern"])
    save_image(mask[None] * pattern, folder / names["fusion"])
    return names


def pyplot():
    """matplotlib's pyplot on the Agg backend (charts are written to files; no display is needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Writes a chart as a PNG (atomically), then closes it so its memory is freed."""
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        pyplot().close(fig)


def save_norms_chart(labels: Sequence[int], norms: Sequence[float], flagged: Sequence[int], median: float,
                     cut: float, threshold: float, path: str | Path, title: str = "") -> Path:
    """Bars of the norms, the median, and `cut`: the norm under which the rule flags a label."""
    plt = pyplot()
    flagged_set = set(flagged)
    positions = np.arange(len(norms))
    colours = ["#d62728" if label in flagged_set else "#1f77b4" for label in labels]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(norms) + 2), 3.6), dpi=110)
    ax.bar(positions, norms, color=colours)
    if len(labels) <= 50:
        ax.set_xticks(positions, [str(v) for v in labels], fontsize=7)
    ax.axhline(median, color="black", lw=1, label=f"median {median:.1f}")
    if cut > 0:
        ax.axhline(cut, color="#d62728", lw=1, ls="--", label=f"anomaly index {threshold:.2f}")
    for pos, label in enumerate(labels):
        if label in flagged_set:
            ax.annotate(str(label), (pos, norms[pos]), ha="center", va="bottom", color="#d62728", fontsize=8)
    ax.set_xlabel("label")
    ax.set_ylabel("L1 norm of reversed mask")
    ax.set_title(title or "Reversed trigger size per label (flagged in red)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
