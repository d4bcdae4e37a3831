"""One model's labels split across workers (local processes or Ray tasks), merged into one result.

A label's trigger depends only on the seed, the label and the clean samples: its start is drawn
for all labels at once from the seed, and its batches from its own random stream. So labels can
be reverse-engineered anywhere and the merged norms equal a single-process scan's, up to the
rounding of a block of other labels (tests/test_scan_split.py). The outlier test needs every
label's norm, so it runs once, on the merged set, in the calling process.

Each part keeps its own journal (`<checkpoint>.part<i>`, or a temporary folder when the scan has
no checkpoint), so an interrupted split scan resumes part by part, and a coarse-to-fine scan's
second pass picks up each label where its part's short pass left it. With Ray, the journals must
lie on storage every node sees (docs/scale.md).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from neuralcleanse.detection.reverse_engineer import TriggerReverseEngineer
from neuralcleanse.detection.scan_state import ScanJournal, load_journal
from neuralcleanse.errors import InputError
from neuralcleanse.parallel import connect_ray, run_calls

# `scanner` below is the NeuralCleanse that asks (its settings: plan, device, seed, block_size, precision,
# sync_every, workers, ray) and `prep` its prepared model and samples; the scanner imports this module, so
# they are not named as types here.


def run_part(scanner: Any, prep: Any, part: list[int], step_limit: int | None,
             journal_path: str, fingerprint: str, threads: int) -> dict[str, Any]:
    """Runs `part`'s labels up to `step_limit` steps (None: the preset's budget), going on from and
    appending to the part's journal. Returns those labels' results and the part's pass count."""
    torch.set_num_threads(threads)
    journal = ScanJournal(journal_path)
    saved = load_journal(journal_path, fingerprint) if Path(journal_path).exists() else None
    block_size = scanner.block_size or (saved[0].get("block_size") if saved else None)
    engine = TriggerReverseEngineer(prep.search_model(), prep.pool.x, prep.pool.y, prep.num_classes,
                                    scanner.plan.config, device=scanner.device, block_size=block_size,
                                    seed=scanner.seed, precision=scanner.precision, sync_every=scanner.sync_every)
    if saved is not None:
        try:
            engine.restore_labels([r for r in saved[1] if "label" in r])
        except ValueError as exc:
            raise InputError(f"the saved scan state {journal_path} is damaged ({exc}); start afresh "
                             "without `resume` (add `force`)") from None
        journal.reopen(saved[2])
    else:
        journal.start(fingerprint, engine.block_size)
    engine.run(part, step_limit=step_limit, on_label_done=lambda label: journal.append(engine.label_record(label)))
    found = engine.results()
    return {"labels": part, "passes": engine.passes, "block_size": engine.block_size,
            **{k: v[part] for k, v in found.items()}}


def run_split(scanner: Any, prep: Any, todo: list[int], checkpoint: str | Path | None,
              fingerprint: str, on_label_done: Callable[[int], None] | None, resume: bool
              ) -> Callable[[list[int], int | None], dict[str, Any]]:
    """A function that runs some labels to a step limit across the workers and returns their
    merged results (tensors indexed like the labels asked for). The labels are dealt to parts
    round-robin once, from `todo`, so a label always runs in the same part and journal.
    `.close()` ends what it started; `.discard()` removes the parts' journals (once the scan is done)."""
    parts = scanner.workers
    owner = {label: i % parts for i, label in enumerate(todo)}
    folder = None
    if checkpoint is None:
        folder = tempfile.TemporaryDirectory(prefix="neuralcleanse-split-")
        base = Path(folder.name) / "state"
    else:
        base = Path(checkpoint)
    part_paths = [Path(f"{base}.part{i}") for i in range(parts)]
    if not resume:  # a fresh scan must not pick up the parts of an older one
        for path in part_paths:
            path.unlink(missing_ok=True)
    ray, connected_here = connect_ray(scanner.ray) if scanner.ray else (None, False)
    threads = max(1, torch.get_num_threads() // parts) if ray is None else 1

    def run(labels: list[int], step_limit: int | None) -> dict[str, Any]:
        calls = []
        for i in range(parts):
            mine = [l for l in labels if owner[l] == i]
            if mine:
                calls.append(((scanner, prep, mine, step_limit, str(part_paths[i]), f"{fingerprint}/part{i}",
                               threads), {}))

        def done(_: int, result: dict[str, Any]) -> None:
            if on_label_done is not None:
                for label in result["labels"]:
                    on_label_done(label)

        results = run_calls(run_part, calls, workers=parts, ray=ray, on_done=done)
        return merge(results, labels)

    def close() -> None:
        if connected_here:
            ray.shutdown()
        if folder is not None:
            folder.cleanup()

    def discard() -> None:
        for path in part_paths:
            path.unlink(missing_ok=True)

    run.close, run.discard = close, discard  # type: ignore[attr-defined]
    return run


def merge(results: list[dict[str, Any]], labels: list[int]) -> dict[str, Any]:
    """The parts' results as one, in the order of `labels`."""
    where = {label: (r, i) for r in results for i, label in enumerate(r["labels"])}
    merged = {key: torch.stack([where[l][0][key][where[l][1]] for l in labels])
              for key in ("mask", "pattern", "l1", "reached", "steps")}
    merged["passes"] = sum(r["passes"] for r in results)
    merged["block_size"] = max(r["block_size"] for r in results)
    return merged
