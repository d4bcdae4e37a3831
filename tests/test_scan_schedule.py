"""Many labels: the coarse-to-fine schedule, the count-aware threshold and the append-only scan
state (a journal whose cost grows with the labels finished, not with labels squared)."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.detection.outlier import CONSISTENCY
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.detection.rules import Rule
from neuralcleanse.detection.scan_state import MAGIC, read_records
from neuralcleanse.detection.schedule import CoarseToFine
from neuralcleanse.errors import InputError
from neuralcleanse.models.classifier import Classifier
from tiny_task import Interrupt, many_label_task, small_schedule

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

K = 30
SMALL = small_schedule()


@pytest.fixture(scope="module")
def many_labels() -> tuple[Classifier, ImageDataset]:
    return many_label_task(K, 600)


def _scanner(schedule: str = "coarse-to-fine") -> NeuralCleanse:
    return NeuralCleanse("fast", schedule=schedule, coarse_to_fine=SMALL, progress=False, max_steps=20, samples=300,
                         block_size=4, rule=Rule("log-count", log_norms=True, alpha=0.05))


def test_coarse_to_fine_scans_candidates_and_a_reference(many_labels) -> None:
    model, data = many_labels
    result = _scanner().scan(model, data)
    coarse = result.settings["coarse"]
    assert result.settings["schedule"] == "coarse-to-fine" and result.tested_labels == K
    # The candidates are the smallest labels of the short pass; the rest of the full-budget labels
    # are the random reference, and only these estimate the median and MAD.
    short = dict(zip(coarse["labels"], coarse["l1_norms"]))
    ranked = sorted((l for l in short if coarse["reached"][l]), key=short.get)
    assert coarse["candidates"] == sorted(ranked[:3])
    assert set(result.labels) == set(coarse["candidates"]) | set(coarse["reference"]) and len(result.labels) < K
    ref = np.log([n for l, n in zip(result.labels, result.l1_norms) if l in coarse["reference"]])
    assert result.outliers.median == pytest.approx(float(np.median(ref)))
    assert result.outliers.consistent_mad == pytest.approx(CONSISTENCY * float(np.median(np.abs(ref - np.median(ref)))))
    # The threshold counts every label the short pass looked at, not only those scanned in full.
    assert result.outliers.threshold == pytest.approx(Rule("r", log_norms=True, alpha=0.05).threshold_for(K))
    # Scanned labels got the full budget: more steps than the short pass, unless they stopped early.
    assert all(s > SMALL.coarse_steps for s in result.steps)
    again = ScanResult.from_dict(result.to_dict(), result.masks, result.patterns)
    assert again.flagged == result.flagged and again.anomaly_index == result.anomaly_index


def test_auto_schedule_is_full_for_few_labels(many_labels) -> None:
    model, data = many_labels
    result = _scanner("auto").scan(model, data)
    assert result.settings["schedule"] == "full" and result.labels == list(range(K))
    with pytest.raises(InputError, match="schedule"):
        NeuralCleanse(schedule="halving")


@pytest.mark.parametrize("stop_after", [5, K + 4])  # in the short pass; in the full-budget pass
def test_coarse_to_fine_resumes_to_the_same_result(many_labels, tmp_path, stop_after) -> None:
    model, data = many_labels
    full = _scanner().scan(model, data)
    state = tmp_path / "state.pt"
    seen = []

    def stop(label: int) -> None:
        seen.append(label)
        if len(seen) == stop_after:
            raise Interrupt

    with pytest.raises(Interrupt):
        _scanner().scan(model, data, checkpoint=state, on_label_done=stop)
    resumed = _scanner().scan(model, data, checkpoint=state, resume=True)
    assert resumed.labels == full.labels and resumed.steps == full.steps
    assert resumed.l1_norms == pytest.approx(full.l1_norms, abs=1e-4)


def test_state_is_an_append_only_journal(many_labels, tmp_path) -> None:
    """Each finished label appends one record; nothing written before is rewritten."""
    model, data = many_labels
    state = tmp_path / "state.pt"
    scanner = NeuralCleanse("fast", schedule="full", progress=False, max_steps=10, samples=300, block_size=4)
    seen = []

    def stop_at(n: int):
        def hook(label: int) -> None:
            seen.append(label)
            if len(seen) == n:
                raise Interrupt
        return hook

    with pytest.raises(Interrupt):
        scanner.scan(model, data, checkpoint=state, on_label_done=stop_at(4))
    first = state.read_bytes()
    records, _ = read_records(state)
    assert [r["label"] for r in records[1:]] == seen and first.startswith(MAGIC)
    with pytest.raises(Interrupt):
        scanner.scan(model, data, checkpoint=state, resume=True, on_label_done=stop_at(10))
    second = state.read_bytes()
    assert second.startswith(first) and len(read_records(state)[0]) == 1 + len(seen)
    # Record sizes do not grow with the labels done: the 10th costs what the 1st did.
    sizes = np.diff([len(MAGIC)] + _record_ends(second))
    assert sizes[-1] <= 1.05 * sizes[1]


def test_torn_last_record_resumes_from_the_whole_ones(many_labels, tmp_path) -> None:
    """A crash while a record is written leaves a torn tail: the journal ends before it, and the
    resumed scan ends where an uninterrupted one does."""
    model, data = many_labels
    scanner = NeuralCleanse("fast", schedule="full", progress=False, max_steps=10, samples=300, block_size=4)
    full = scanner.scan(model, data)
    state = tmp_path / "state.pt"
    seen = []

    def stop(label: int) -> None:
        seen.append(label)
        if len(seen) == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        scanner.scan(model, data, checkpoint=state, on_label_done=stop)
    blob = state.read_bytes()
    state.write_bytes(blob[:-100])
    assert len(read_records(state)[0]) == 1 + 5
    resumed = scanner.scan(model, data, checkpoint=state, resume=True)
    assert resumed.steps == full.steps
    assert resumed.l1_norms == pytest.approx(full.l1_norms, abs=1e-4)


def _record_ends(blob: bytes) -> list[int]:
    ends, at = [], len(MAGIC)
    while at + 40 <= len(blob):
        at += 40 + int.from_bytes(blob[at:at + 8], "big")
        ends.append(at)
    return ends


def test_choice_ranks_unreached_labels_last_and_is_seeded() -> None:
    ctf = CoarseToFine(candidate_share=0.1, min_candidates=2, reference=5)
    labels = list(range(40))
    norms = [float(50 + l) for l in labels]
    norms[7], norms[9] = 1.0, 2.0
    reached = [l != 7 for l in labels]  # label 7's tiny mask never reached the threshold
    candidates, reference = ctf.choose(labels, norms, reached, seed=0)
    assert candidates == [0, 1, 2, 9] and 7 not in candidates  # ceil(0.1 * 40) = 4 labels
    assert ctf.choose(labels, norms, reached, seed=0)[1] == reference and len(reference) == 5
    assert ctf.choose(labels, norms, reached, seed=1)[1] != reference


def test_count_aware_threshold_grows_with_the_labels() -> None:
    rule = Rule("count", log_norms=True, threshold=2.0, alpha=0.05)
    t = [rule.threshold_for(n) for n in (10, 43, 1000, 2622)]
    assert t == sorted(t) and t[0] == pytest.approx(2.576, abs=1e-3) and t[2] == pytest.approx(3.891, abs=1e-3)
    assert Rule("floor", threshold=3.0, alpha=0.5).threshold_for(3) == 3.0  # never below the floor
    assert rule.with_threshold(2.5).threshold_for(1000) == 2.5  # a fixed threshold stays fixed
    assert Rule.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError, match="alpha"):
        Rule("bad", alpha=1.5)
    # At 1,000 labels the natural tail passes 2 but not the count-aware threshold: log norms at the
    # normal distribution's quantiles, the smallest at z = -3.29.
    norms = [math.exp(5.5 + 0.3 * NormalDist().inv_cdf((i + 0.5) / 1000)) for i in range(1000)]
    assert rule.with_threshold(2.0).outliers(norms, list(range(1000))).flagged
    assert not rule.outliers(norms, list(range(1000))).flagged


def test_restarts_near_the_threshold_take_the_median_seed(infected, data) -> None:
    model, _ = infected
    kw = dict(samples=240, progress=False, max_steps=30, block_size=2)
    # A band wide enough that any index counts as near the threshold.
    result = NeuralCleanse("fast", restarts=2, restart_band=1e9, **kw).scan(model, data.test)
    runs = [NeuralCleanse("fast", seed=s, restarts=0, **kw).scan(model, data.test) for s in (0, 1, 2)]
    info = result.settings["restarts"]
    assert info["seeds"] == [0, 1, 2] and np.allclose(info["l1_norms"], [r.l1_norms for r in runs], atol=1e-5)
    indices = [r.anomaly_index for r in runs]
    assert info["anomaly_indices"] == pytest.approx(indices)
    # The result is the seed whose index is the median, whole: norms, masks and verdict.
    pick = int(np.argsort(indices)[1])
    chosen = runs[pick]
    assert result.anomaly_index == pytest.approx(sorted(indices)[1])
    assert result.l1_norms == pytest.approx(chosen.l1_norms, abs=1e-5)
    assert torch.allclose(result.masks, chosen.masks, atol=1e-5)
    assert info["chosen_seed"] == pick and result.flagged == chosen.flagged
    assert result.settings["seed"] == 0  # the seed the user asked for, so the command repeats
    # The verdict survives the report's round trip.
    again = ScanResult.from_dict(result.to_dict(), result.masks, result.patterns)
    assert again.flagged == result.flagged and again.anomaly_index == pytest.approx(result.anomaly_index)
    # Far from the threshold (band 0) nothing is scanned again.
    single = NeuralCleanse("fast", restarts=2, restart_band=0.0, **kw).scan(model, data.test)
    assert "restarts" not in single.settings and single.l1_norms == pytest.approx(runs[0].l1_norms)
    with pytest.raises(InputError, match="restarts"):
        NeuralCleanse(restarts=-1)


def test_confirm_rescans_near_the_threshold_with_another_preset(infected, data) -> None:
    model, _ = infected
    kw = dict(samples=240, progress=False, max_steps=20, samples_per_step=64, block_size=2)
    result = NeuralCleanse("fast", confirm="original", restart_band=1e9, **kw).scan(model, data.test)
    first = NeuralCleanse("fast", restarts=0, **kw).scan(model, data.test)
    slow = NeuralCleanse("original", restarts=0, **kw).scan(model, data.test)
    # The result is the original preset's scan, whole; the first scan is kept on record.
    assert result.l1_norms == pytest.approx(slow.l1_norms, abs=1e-5)
    assert torch.allclose(result.masks, slow.masks, atol=1e-5) and result.flagged == slow.flagged
    info = result.settings["confirmed"]
    assert info["preset"] == "original" and info["anomaly_index_first"] == pytest.approx(first.anomaly_index)
    assert info["l1_norms_first"] == pytest.approx(first.l1_norms, abs=1e-5)
    assert result.settings["preset"] == "fast" and "restarts" not in result.settings
    assert result.settings["config"]["batch_size"] == slow.settings["config"]["batch_size"] != \
        first.settings["config"]["batch_size"]
    again = ScanResult.from_dict(result.to_dict(), result.masks, result.patterns)
    assert again.settings["confirmed"]["preset"] == "original"
    # Far from the threshold the first scan stands.
    far = NeuralCleanse("fast", confirm="original", restart_band=0.0, **kw).scan(model, data.test)
    assert "confirmed" not in far.settings and far.l1_norms == pytest.approx(first.l1_norms, abs=1e-5)
    with pytest.raises(InputError, match="confirm"):
        NeuralCleanse(confirm="thorough")
