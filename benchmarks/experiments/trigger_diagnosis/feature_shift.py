"""Does the reversed trigger move the last layer's input the way the real trigger does? And can the head alone unlearn it?

    python -m benchmarks.experiments.trigger_diagnosis.feature_shift                     # the seven models unlearning fails, four it repairs
    python -m benchmarks.experiments.trigger_diagnosis.feature_shift --ids mnist-badnets-022,mnist-badnets-030

Why: the input filter, fitted with the reversed trigger, catches the real trigger on 20 of 20 MNIST test models,
while unlearning the reversed trigger leaves the real one working on MLP and batch-norm nets. So at the layer the
filter reads (the input of the last dense layer) the two triggers must look alike even where their masks lie apart.
For each model (scanned as benchmarks.mitigation_population scans it; the user's 1,000 images halved as `mitigate` halves
them) this records:

- `cos`: the cosine between the mean shift the reversed trigger causes at that layer and the real trigger's
  (on the tuning half; the real trigger is used only to measure);
- `head`: a repair of the last dense layer alone, the body frozen: 300 Adam steps (rate 1e-2, batch 64) on the
  tuning half's features, half of each batch shifted by s times the reversed trigger's mean shift (s drawn in
  [0.5, 2]), true labels kept, with the default's distillation to the head's own outputs on unshifted features.
  The real attack left and the clean accuracy are measured on the held-out half.

One JSON line a model, to benchmarks/experiments/trigger_diagnosis/results/feature_shift_mnist.jsonl.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.mitigation_population import model_of, population
from benchmarks.population_recipes import trigger_of

from neuralcleanse import NeuralCleanse, load_dataset
from neuralcleanse.data.dataset import DatasetSplits
from neuralcleanse.mitigation import Backdoor
from neuralcleanse.metrics import measure
from neuralcleanse.mitigation.profile import profile_activations, unit_activations
from neuralcleanse.mitigation.runner import split_for_mitigation
from neuralcleanse.models.layers import resolve_layer

ROOT = Path(__file__).resolve().parent
SIZE = 1000
# The seven MNIST models the default unlearning leaves above 5% (0.6 and 0.8), then four it repairs.
DEFAULT_IDS = [f"mnist-badnets-{i:03d}" for i in (6, 22, 17, 47, 53, 3, 51, 11, 30, 24, 0)]


def head_repair(head: torch.nn.Linear, feats: torch.Tensor, y: torch.Tensor, shift: torch.Tensor,
                steps: int = 300, lr: float = 1e-2, span: tuple[float, float] = (0.5, 2.0)) -> None:
    """Trains `head` in place so that features moved along `shift` keep their true labels."""
    with torch.no_grad():
        teacher = F.log_softmax(head(feats), 1)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        f = feats[idx].clone()
        moved = torch.rand(64, generator=gen) < 0.5
        strength = span[0] + (span[1] - span[0]) * torch.rand(64, generator=gen)
        f[moved] += strength[moved, None] * shift
        logits = head(f)
        loss = F.cross_entropy(logits, y[idx]) + F.kl_div(F.log_softmax(logits, 1), teacher[idx], log_target=True,
                                                          reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()


def mean_shift(profile) -> torch.Tensor:
    return profile.triggered_mean - profile.clean_mean


def one(row: dict, user) -> dict:
    model, recipe = model_of(row, "mnist")
    target = recipe["attack"]["target"]
    real = [Backdoor(target, trigger_of(recipe))]
    start = time.perf_counter()
    scan = NeuralCleanse("fast", progress=False, seed=0).scan(model, user)
    reversed_ = [Backdoor(target, scan.trigger(target))]
    tune, held_out = split_for_mitigation(DatasetSplits(user, user))
    layer = resolve_layer(model)
    rev_shift, real_shift = (mean_shift(profile_activations(model, tune, b, layer)) for b in (reversed_, real))
    before = measure(model, held_out, real)
    head = dict(model.net.named_modules())[layer.name]  # population models are Classifiers
    if not isinstance(head, torch.nn.Linear):
        raise SystemExit(f"{row['id']}: the default layer is not read at a dense layer's input")
    head_repair(head, unit_activations(model, tune.x, layer, 256, "cpu"), tune.y, rev_shift)
    after = measure(model, held_out, real)
    return {"id": row["id"], "split": row["split"], "arch": recipe["arch"],
            "cos": round(float(F.cosine_similarity(rev_shift, real_shift, dim=0)), 4),
            "norm_ratio": round(float(real_shift.norm() / rev_shift.norm()), 3),
            "real_before": before.worst_attack_success, "clean_before": before.clean_accuracy,
            "head_real_after": after.worst_attack_success, "head_clean_after": after.clean_accuracy,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", default=",".join(DEFAULT_IDS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = ROOT / "results" / "feature_shift_mnist.jsonl"
    done = {json.loads(l)["id"] for l in out.open()} if out.exists() else set()
    user = load_dataset("mnist").test.random_sample(SIZE, seed=1000 + SIZE)  # benchmarks.mitigation_population's draw
    rows = {r["id"]: r for r in population("mnist", "all")}
    print("| model | architecture | cos(reversed shift, real shift) | real/reversed shift norm | head repair: real left | "
          "clean-accuracy cost |\n|---|---|---|---|---|---|", flush=True)
    for model_id in args.ids.split(","):
        if model_id in done:
            continue
        line = one(rows[model_id], user)
        with out.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(f"| {model_id} | {line['arch']} | {line['cos']:.2f} | {line['norm_ratio']:.2f} | "
              f"{line['head_real_after']:.1%} | {100 * (line['clean_before'] - line['head_clean_after']):.1f} pt |",
              flush=True)


if __name__ == "__main__":
    main()
