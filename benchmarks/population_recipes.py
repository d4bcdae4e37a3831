"""The population's recipes: networks written here (not the package's), drawn per model from its index.

Every model of `benchmarks.population` is made from one recipe, drawn by `draw_recipe(dataset,
kind, index)` from a generator seeded by the model's id alone, so a missing model file is rebuilt from
its index. The networks are plain `torch.nn` modules of the kinds found in the wild: the paper's
conv-pool-dense net, BatchNorm nets with global average pooling that normalise their own input, MLPs,
small ResNets; taking [0,1] pixels, 0..255 pixels, or normalising inside; ending in logits, a softmax
or a log-softmax.
"""
from __future__ import annotations

import math
import random
from typing import Any

import torch
from torch import nn

from neuralcleanse.models.architectures import BasicBlock

# Dataset statistics of the training split, in [0,1] units (measured on load_dataset's train split).
STATS = {"mnist": ((0.1307,), (0.3081,)), "gtsrb": ((0.3554, 0.3157, 0.3325), (0.2669, 0.2493, 0.2580)),
         "cifar10": ((0.4837, 0.4692, 0.4255), (0.2375, 0.2348, 0.2525))}
SHAPES = {"mnist": (1, 28, 28), "gtsrb": (3, 32, 32), "cifar10": (3, 32, 32)}
CLASSES = {"mnist": 10, "gtsrb": 43, "cifar10": 10}

ARCHS = {"mnist": ("paper", "bn_gap", "mlp"), "gtsrb": ("paper", "bn_gap", "small_resnet"),
         "cifar10": ("paper", "bn_gap", "small_resnet")}
INPUTS = ("unit", "255", "normalised_inside")
OUTPUTS = ("logits", "softmax", "log_softmax")
PATTERNS = ("white", "checkerboard", "random_binary", "coloured")

# What each dataset's draw may pick; training kept short enough for a 2-core CPU (see population.py).
SPACE: dict[str, dict[str, Any]] = {
    "mnist": {"epochs": (1, 2, 3), "batch_sizes": (64, 128, 256), "train_sizes": (20000, 30000, 40000, 60000),
              "trigger_sides": (3, 8), "poison_rates": (0.05, 0.20), "min_images": 60000, "min_accuracy": 0.95},
    # Batch-norm nets with global pooling and small ResNets learn GTSRB's 43 signs more slowly than the paper's
    # net: in 2-3 epochs none passed the accuracy floor (at 6-8, 2 of 4), so they train for 12 or 16 (a tuple of the same length,
    # so every other recipe's draw is unchanged).
    "gtsrb": {"epochs": (2, 3), "bn_epochs": (12, 16), "batch_sizes": (64, 128, 256), "train_sizes": (39209,),
              "trigger_sides": (3, 6), "poison_rates": (0.05, 0.20), "min_images": 78418, "min_accuracy": 0.85},
    # Natural images: short training (a few minutes a model on 2 cores) reaches 60-75%; the floor is what such a run
    # reaches, and the triggers are the 3-5 px patches.
    "cifar10": {"epochs": (4, 6), "bn_epochs": (4, 6), "batch_sizes": (64, 128, 256), "train_sizes": (30000,),
                "trigger_sides": (3, 5), "poison_rates": (0.05, 0.20), "min_images": 60000, "min_accuracy": 0.60},
}
# Blended attacks (Chen et al. 2017): a full-image random pattern mixed into every pixel at this strength.
BLEND_ALPHAS = (0.1, 0.2)


# ----------------------------------------------------------------------------------------------
# Layers and networks


class Normalise(nn.Module):
    """(x - mean) / std inside the network, in the units the network takes (0..1 or 0..255)."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Head(nn.Module):
    """What the network's last layer ends in: nothing (logits), a softmax or a log-softmax."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in OUTPUTS:
            raise ValueError(kind)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "softmax":
            return torch.softmax(x, dim=1)
        if self.kind == "log_softmax":
            return torch.log_softmax(x, dim=1)
        return x


class PaperMNIST(nn.Module):
    """2 conv 5x5 (16, 32) each with max-pool, dense 512, dense: the paper's MNIST net (Keras style, no padding)."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10, dense: int = 512) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, dense), nn.ReLU(), nn.Linear(dense, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class PaperGTSRB(nn.Module):
    """A smaller cousin of the paper's GTSRB net: conv 3x3 pairs (32, 64) with max-pool, dense, dense."""

    def __init__(self, in_ch: int = 3, num_classes: int = 43, width: int = 32, dense: int = 256) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(2 * w * 8 * 8, dense), nn.ReLU(), nn.Dropout(0.3),
                                        nn.Linear(dense, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BnGap(nn.Module):
    """Conv-BatchNorm-ReLU layers, downsampling by stride or max-pool, global average pooling, linear."""

    def __init__(self, in_ch: int, num_classes: int, depth: int = 3, width: int = 32, down: str = "stride") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        for i in range(depth):
            out = width * (2 ** min(i, 2))
            # Two halvings, 28 -> 7 (MNIST) or 32 -> 8 (GTSRB): by the 2nd and 3rd convs' stride, or by
            # max-pooling after the 1st and 2nd convs.
            stride = 2 if down == "stride" and i in (1, 2) else 1
            layers += [nn.Conv2d(ch, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if down == "pool" and i in (0, 1):
                layers.append(nn.MaxPool2d(2))
            ch = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, int] = (512, 256)) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden[0]), nn.ReLU(),
                                 nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Linear(hidden[1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallResNet(nn.Module):
    def __init__(self, in_ch: int, num_classes: int, width: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, ch = [], width
        for i in range(blocks):
            out = width * 2 ** min(i, 2)
            layers.append(BasicBlock(ch, out, 1 if i == 0 else 2))
            ch = out
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def build_net(recipe: dict[str, Any]) -> nn.Module:
    """The recipe's network, input normalisation and output head included (the Classifier wrapping it
    only rescales 0..1 to 0..255 for the "255" input convention)."""
    dataset, arch, kw = recipe["dataset"], recipe["arch"], recipe["arch_kwargs"]
    c, h, w = SHAPES[dataset]
    n = CLASSES[dataset]
    if arch == "paper":
        body = PaperMNIST(c, n, **kw) if dataset == "mnist" else PaperGTSRB(c, n, **kw)
    elif arch == "bn_gap":
        body = BnGap(c, n, **kw)
    elif arch == "mlp":
        body = MLP(c * h * w, n, tuple(kw["hidden"]))
    elif arch == "small_resnet":
        body = SmallResNet(c, n, **kw)
    else:
        raise ValueError(f"unknown architecture {arch}")
    norm = recipe.get("inside_normalisation")
    layers: list[nn.Module] = [Normalise(norm["mean"], norm["std"])] if norm else []
    return nn.Sequential(*layers, body, Head(recipe["output"]))


# ----------------------------------------------------------------------------------------------
# The draw


def _loguniform(rng: random.Random, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def model_id(dataset: str, kind: str, index: int) -> str:
    return f"{dataset}-{kind}-{index:03d}"


def draw_recipe(dataset: str, kind: str, index: int) -> dict[str, Any]:
    """Everything that makes model `index` of `kind` ("clean", "badnets" or "blended"), from a generator
    seeded by its id. Index parity gives the split: even "tune", odd "test"."""
    space = SPACE[dataset]
    rng = random.Random(model_id(dataset, kind, index))
    c, h, w = SHAPES[dataset]
    arch = rng.choice(ARCHS[dataset])
    if arch == "paper":
        kw: dict[str, Any] = {} if dataset == "mnist" else {"width": rng.choice((16, 32)), "dense": rng.choice((128, 256))}
    elif arch == "bn_gap":
        # MNIST width 16 (2-core CPU time: width 32 costs 4x, width 8 learns too slowly in a few epochs)
        widths = (16,) if dataset == "mnist" else (16, 32)
        kw = {"depth": rng.choice((3, 4)), "width": rng.choice(widths), "down": rng.choice(("stride", "pool"))}
    elif arch == "mlp":
        kw = {"hidden": list(rng.choice(((512, 256), (256, 128), (300, 100))))}
    else:  # small_resnet; width 16 only on GTSRB, where 8 epochs of width 24 cost half an hour on 2 cores (a tuple
        # of the same length, so the rest of every recipe's draw is unchanged)
        kw = {"width": rng.choice((16, 24) if dataset == "mnist" else (16, 16)), "blocks": 3}
    convention = rng.choice(INPUTS)
    output = rng.choice(OUTPUTS)
    unit = 255.0 if convention == "255" else 1.0
    mean, std = STATS[dataset]
    inside = None
    if convention == "normalised_inside":
        inside = {"mean": list(mean), "std": list(std)}
    elif arch in ("bn_gap", "small_resnet"):
        # These nets normalise their input themselves whatever they take: dataset statistics or the
        # common (0.5, 0.5), in the units of their input (0..1 or 0..255).
        m, s = (mean, std) if rng.random() < 0.5 else ((0.5,) * c, (0.5,) * c)
        inside = {"mean": [unit * v for v in m], "std": [unit * v for v in s]}
    name = rng.choice(("adam", "sgd"))
    if name == "adam":
        opt: dict[str, Any] = {"name": "adam", "lr": round(_loguniform(rng, 5e-4, 3e-3), 6)}
    else:
        # BatchNorm nets take larger rates; with the same range they barely learn in an epoch or two.
        lr = _loguniform(rng, 0.01, 0.1 if arch in ("bn_gap", "small_resnet") else 0.05)
        if convention == "255" and inside is None:
            # SGD on unnormalised 0..255 inputs diverges at the usual rates; whoever trains such a
            # net lowers the rate until it trains (done here once, by the same factor for all).
            lr /= 100.0
        opt = {"name": "sgd", "lr": round(lr, 7), "momentum": 0.9}
    opt["weight_decay"] = rng.choice((0.0, 0.0, 1e-4, 5e-4))
    opt["schedule"] = rng.choice(("constant", "cosine"))
    train_size = rng.choice(space["train_sizes"])
    # At least `min_images` image passes (e.g. 20k images take 3 epochs): fewer leave many nets half-trained.
    choices = space.get("bn_epochs", space["epochs"]) if arch in ("bn_gap", "small_resnet") else space["epochs"]
    epochs = max(rng.choice(choices), min(max(choices), -(-space["min_images"] // train_size)))
    recipe: dict[str, Any] = {
        "id": model_id(dataset, kind, index), "dataset": dataset, "kind": kind, "index": index,
        "split": "tune" if index % 2 == 0 else "test",
        "arch": arch, "arch_kwargs": kw, "input": convention, "pixel_scale": unit,
        "inside_normalisation": inside, "output": output, "optimiser": opt,
        "loss": {"logits": "cross_entropy", "softmax": "nll_of_log_clipped_softmax_1e-7",
                 "log_softmax": "nll"}[output],
        "epochs": epochs, "batch_size": rng.choice(space["batch_sizes"]), "train_size": train_size,
        "seed": rng.randrange(2 ** 31),  # weights' init, the training subset and the batch order
        "attack": None,
    }
    if kind == "badnets":
        lo, hi = space["trigger_sides"]
        side = rng.randint(lo, hi)
        row, col = rng.randint(0, h - side), rng.randint(0, w - side)
        pattern = rng.choice(PATTERNS)
        attack: dict[str, Any] = {"type": "badnets", "side": side, "row": row, "col": col, "pattern": pattern,
                                  "target": rng.randrange(CLASSES[dataset]),
                                  "poison_rate": round(rng.uniform(*space["poison_rates"]), 4),
                                  "poison_seed": rng.randrange(2 ** 31)}
        if pattern == "checkerboard":
            attack["phase"] = rng.randint(0, 1)
        elif pattern == "random_binary":
            attack["bits"] = [[rng.randint(0, 1) for _ in range(side)] for _ in range(side)]
        elif pattern == "coloured":
            attack["colour"] = ([round(rng.uniform(0.3, 1.0), 3)] if c == 1 else
                                [round(rng.random(), 3) for _ in range(c)])
        recipe["attack"] = attack
    elif kind == "blended":
        recipe["attack"] = {"type": "blended", "alpha": round(rng.uniform(*BLEND_ALPHAS), 4),
                            "target": rng.randrange(CLASSES[dataset]),
                            "poison_rate": round(rng.uniform(*space["poison_rates"]), 4),
                            "pattern_seed": rng.randrange(2 ** 31), "poison_seed": rng.randrange(2 ** 31)}
    return recipe


def trigger_of(recipe: dict[str, Any]):
    """The recipe's trigger as the package's Trigger (mask and pattern in raw [0,1] pixels): a BadNets patch,
    or a blend (the mask alpha everywhere, the pattern uniform noise)."""
    import numpy as np

    from neuralcleanse.data.trigger import blended_trigger, patch_trigger

    a = recipe["attack"]
    shape = SHAPES[recipe["dataset"]]
    if a.get("type") == "blended":
        return blended_trigger(shape, a["alpha"], a["pattern_seed"])
    side, pos = a["side"], (a["row"], a["col"])
    if a["pattern"] == "white":
        return patch_trigger(shape, side, pos, 1.0)
    if a["pattern"] == "coloured":
        return patch_trigger(shape, side, pos, a["colour"])
    if a["pattern"] == "checkerboard":
        img = (np.add.outer(np.arange(side), np.arange(side)) + a["phase"]) % 2
    else:
        img = np.asarray(a["bits"])
    return patch_trigger(shape, side, pos, pattern_image=img.astype(np.float32))
