"""One model's labels split across workers: the merged result equals a single-process scan's
(to rounding), with either schedule, resumed or not, in local processes or on Ray."""
from __future__ import annotations

import pytest
import torch

from neuralcleanse.data.dataset import ImageDataset
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.models.classifier import Classifier
from tiny_task import Interrupt, many_label_task, small_schedule

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

K = 24
SMALL = small_schedule()


@pytest.fixture(scope="module")
def model_and_data() -> tuple[Classifier, ImageDataset]:
    return many_label_task(K, 480)


def _scanner(schedule: str, **kw) -> NeuralCleanse:
    # A fixed block size: the parts then round exactly as the single process does.
    return NeuralCleanse("fast", schedule=schedule, coarse_to_fine=SMALL, progress=False, max_steps=16, samples=240,
                         block_size=2, **kw)


def _same(a, b) -> None:
    assert a.labels == b.labels and a.steps == b.steps and a.flagged == b.flagged
    assert a.l1_norms == pytest.approx(b.l1_norms, abs=1e-4)
    torch.testing.assert_close(a.masks, b.masks, atol=1e-5, rtol=0)
    assert a.anomaly_index == pytest.approx(b.anomaly_index, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["full", "coarse-to-fine"])
def test_two_workers_give_the_single_process_result(model_and_data, schedule) -> None:
    model, data = model_and_data
    one = _scanner(schedule).scan(model, data)
    two = _scanner(schedule, workers=2).scan(model, data)
    _same(two, one)
    assert two.settings["workers"] == 2 and two.settings["schedule"] == schedule


@pytest.mark.slow
def test_split_scan_resumes_part_by_part(model_and_data, tmp_path) -> None:
    model, data = model_and_data
    one = _scanner("coarse-to-fine").scan(model, data)
    state = tmp_path / "state.pt"
    calls = []

    def stop(label: int) -> None:  # a part reports its labels when it returns: stop after the short pass
        calls.append(label)
        if len(calls) == K:
            raise Interrupt

    with pytest.raises(Interrupt):
        _scanner("coarse-to-fine", workers=2).scan(model, data, checkpoint=state, on_label_done=stop)
    parts = sorted(p.name for p in tmp_path.iterdir())
    assert parts == ["state.pt", "state.pt.part0", "state.pt.part1"]
    resumed = _scanner("coarse-to-fine", workers=2).scan(model, data, checkpoint=state, resume=True)
    _same(resumed, one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # the parts' journals are gone


def test_bad_worker_count_is_refused() -> None:
    from neuralcleanse.errors import InputError

    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="workers"):
            NeuralCleanse(workers=bad)


@pytest.mark.slow
def test_ray_tasks_give_the_single_process_result(model_and_data) -> None:
    ray = pytest.importorskip("ray")
    model, data = model_and_data
    one = _scanner("full").scan(model, data)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = _scanner("full", workers=2, ray="auto").scan(model, data)
    finally:
        ray.shutdown()
    _same(on_ray, one)
