"""Pilot (2026-12-04): unlearning that trains only the last K dense layers, the body frozen.

    python -m benchmarks.experiments.unlearning_variants.top_layers_unlearning 2 \
        mnist-badnets-006,mnist-badnets-022 \
        benchmarks/experiments/unlearning_variants/results/unlearning_population_mnist_top_layers.jsonl

A one-off: it patches `train_classifier` as the unlearning module sees it, at run time, so that only the last K
`nn.Linear` layers have gradients, and runs benchmarks.mitigation_population's default recipe with batch-norm
statistics frozen. Not an option of the library: it repaired none of the seven models the default fails
(docs/experiments/2026-12-04-repairs-at-the-last-layers.md). Kept so those figures can be rerun.
"""
import json
import sys
from pathlib import Path

import torch

import benchmarks.mitigation_population as mp
import neuralcleanse.mitigation.unlearning as ul
from neuralcleanse import load_dataset

K = 2  # set from the command line by main()


def train_top(model, *a, **k):
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-K:]
    keep = {id(p) for l in linears for p in l.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return ORIGINAL(model, *a, **k)


ORIGINAL = ul.train_classifier


def main() -> None:
    global K
    K, ids, out = int(sys.argv[1]), sys.argv[2].split(','), Path(sys.argv[3])
    torch.set_num_threads(1)
    ul.train_classifier = train_top
    test = load_dataset('mnist').test
    rows = {r['id']: r for r in mp.population('mnist', 'all')}
    for i in ids:
        res = mp.run_one(rows[i], 'mnist', 1000, 'sized', f'top{K}', test, rounds=3, min_rounds=3, tolerance=0.02,
                         distill=1.0, freeze_norm=True)
        with out.open('a') as fh:
            fh.write(json.dumps(res) + '\n')
        print(i, res['arch'], f"real {100*res['real_after']:.1f}% cost {100*(res['clean_before']-res['clean_after']):.1f} pt "
              f"lr={res['lr']} {res['seconds']}s", flush=True)


if __name__ == "__main__":
    main()
