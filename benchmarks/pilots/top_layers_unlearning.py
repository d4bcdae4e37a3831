"""Pilot (session 17, issue 13): unlearning that trains only the last K dense layers, the body frozen.

    .venv/bin/python benchmarks/pilots/top_layers_unlearning.py 2 mnist-badnets-006,mnist-badnets-022 \
        benchmarks/results/unlearning_population_mnist_s17_top2.jsonl

A one-off: it patches `train_classifier` as the unlearning module sees it, at run time, so that only the last K
`nn.Linear` layers have gradients, and runs mitigation_population.py's default recipe with batch-norm statistics
frozen. Not an option of the library: it repaired none of the seven models the default fails
(docs/results.md, "Session 17"). Kept so those figures can be rerun.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mitigation_population as mp  # noqa: E402
import neuralcleanse.mitigation.unlearning as ul  # noqa: E402
from neuralcleanse import load_dataset  # noqa: E402

K, ids, out = int(sys.argv[1]), sys.argv[2].split(','), Path(sys.argv[3])
torch.set_num_threads(1)
orig = ul.train_classifier


def train_top(model, *a, **k):
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-K:]
    keep = {id(p) for l in linears for p in l.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return orig(model, *a, **k)


ul.train_classifier = train_top
test = load_dataset('mnist').test
rows = {r['id']: r for r in mp.population('mnist', 'all')}
for i in ids:
    res = mp.run_one(rows[i], 'mnist', 1000, 'sized', f'top{K}', test, rounds=3, min_rounds=3, tolerance=0.02, distill=1.0, freeze_norm=True)
    with out.open('a') as fh:
        fh.write(json.dumps(res) + '\n')
    print(i, res['arch'], f"real {100*res['real_after']:.1f}% cost {100*(res['clean_before']-res['clean_after']):.1f} pt lr={res['lr']} {res['seconds']}s", flush=True)
