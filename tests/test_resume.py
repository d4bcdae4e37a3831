"""Interrupted scans resume to the result an uninterrupted scan gives; finished runs are never
overwritten silently; --json prints the report for scripts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import assert_bad_input, invoke, scans_interrupted_after, train_tiny, write_npz
from neuralcleanse.cli import EXIT_CLEAN, EXIT_INFECTED
from neuralcleanse.detection import NeuralCleanse
from neuralcleanse.errors import InputError

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

EXE = Path(sys.executable).parent / "neuralcleanse"


class Interrupt(Exception):
    pass


def _stop_after(n: int):
    seen = []

    def hook(label: int) -> None:
        seen.append(label)
        if len(seen) == n:
            raise Interrupt
    return hook


@pytest.mark.parametrize("block", [1, 2])
def test_interrupted_scan_resumes_to_the_same_result(infected, data, tmp_path, block) -> None:
    model, _ = infected
    full = NeuralCleanse("fast", samples=240, progress=False, block_size=block).scan(model, data.test)
    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        NeuralCleanse("fast", samples=240, progress=False, block_size=block).scan(
            model, data.test, on_label_done=_stop_after(3), checkpoint=state)
    assert state.is_file()
    # The block size comes back from the saved state when not given.
    resumed = NeuralCleanse("fast", samples=240, progress=False).scan(model, data.test, checkpoint=state, resume=True)
    assert resumed.settings["block_size"] == block
    # Resumed labels share a block with other labels than before, and oneDNN's kernels for another
    # batch size round differently (measured: 5e-7 on this CPU, none on others): equal up to rounding.
    assert resumed.steps == full.steps and resumed.flagged == full.flagged
    torch.testing.assert_close(resumed.masks, full.masks, atol=1e-5, rtol=0)
    torch.testing.assert_close(resumed.patterns, full.patterns, atol=1e-5, rtol=0)
    assert resumed.l1_norms == pytest.approx(full.l1_norms, abs=1e-4)


def test_resume_with_windows_of_steps(infected, data, tmp_path) -> None:
    """A scan that looks at finished labels only every few steps (the GPU default) saves each
    label's stream after giving back the batches it drew but did not use: resumed, it ends where
    an uninterrupted scan that looks every step ends."""
    model, _ = infected
    full = NeuralCleanse("fast", samples=240, progress=False, block_size=2, sync_every=1).scan(model, data.test)
    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        NeuralCleanse("fast", samples=240, progress=False, block_size=2, sync_every=5).scan(
            model, data.test, on_label_done=_stop_after(3), checkpoint=state)
    resumed = NeuralCleanse("fast", samples=240, progress=False, block_size=2, sync_every=5).scan(
        model, data.test, checkpoint=state, resume=True)
    assert resumed.steps == full.steps
    assert any(s % 5 for s in full.steps)  # some labels finished inside a window
    torch.testing.assert_close(resumed.masks, full.masks, atol=1e-5, rtol=0)
    assert resumed.flagged == full.flagged


def test_resume_refuses_other_settings_or_model(infected, clean_model, data, tmp_path) -> None:
    model, _ = infected
    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        NeuralCleanse("fast", samples=240, progress=False, block_size=2).scan(
            model, data.test, on_label_done=_stop_after(2), checkpoint=state)
    with pytest.raises(InputError, match="another model, other data or other settings"):
        NeuralCleanse("fast", samples=240, progress=False, seed=5).scan(model, data.test, checkpoint=state, resume=True)
    with pytest.raises(InputError, match="another model"):
        NeuralCleanse("fast", samples=240, progress=False).scan(clean_model, data.test, checkpoint=state, resume=True)
    with pytest.raises(InputError, match="no interrupted scan"):
        NeuralCleanse("fast", samples=240, progress=False).scan(model, data.test, checkpoint=tmp_path / "none.pt",
                                                                resume=True)
    state.write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged"):
        NeuralCleanse("fast", samples=240, progress=False).scan(model, data.test, checkpoint=state, resume=True)


# ---- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("resume")
    npz = write_npz(work / "data.npz")
    model = work / "m.pt"
    train_tiny(npz, model)
    return model, npz


SCAN_ARGS = ("--samples", "200", "--block-size", "1")


def test_finished_scan_is_not_overwritten(cli_model, tmp_path) -> None:
    model, npz = cli_model
    out = tmp_path / "scan"
    first = invoke("scan", str(model), "--data", str(npz), "--out", str(out), *SCAN_ARGS)
    assert first.exit_code in (EXIT_CLEAN, EXIT_INFECTED), first.output
    before = (out / "report.json").read_bytes()
    assert_bad_input(invoke("scan", str(model), "--data", str(npz), "--out", str(out), *SCAN_ARGS),
                     "already holds a finished scan", "--force")
    assert (out / "report.json").read_bytes() == before
    # --resume on a finished scan reports it and recomputes nothing.
    again = invoke("scan", str(model), "--data", str(npz), "--out", str(out), "--resume", *SCAN_ARGS)
    assert again.exit_code == first.exit_code and "nothing to resume" in again.stderr
    assert (out / "report.json").read_bytes() == before
    forced = invoke("scan", str(model), "--data", str(npz), "--out", str(out), "--force", "--seed", "3", *SCAN_ARGS)
    assert forced.exit_code in (EXIT_CLEAN, EXIT_INFECTED)
    assert json.loads((out / "report.json").read_text())["settings"]["seed"] == 3
    assert_bad_input(invoke("scan", str(model), "--data", str(npz), "--out", str(out), "--force", "--resume"),
                     "contradict")


def test_ctrl_c_then_resume(cli_model, tmp_path) -> None:
    model, npz = cli_model
    reference = tmp_path / "reference"
    invoke("scan", str(model), "--data", str(npz), "--out", str(reference), *SCAN_ARGS)
    out = tmp_path / "scan"
    with scans_interrupted_after(3):  # Ctrl-C once three labels are done
        result = invoke("scan", str(model), "--data", str(npz), "--out", str(out), *SCAN_ARGS)
    assert result.exit_code == 130, result.output
    assert not (out / "report.json").exists() and (out / ".scan-state.pt").exists()
    assert_bad_input(invoke("scan", str(model), "--data", str(npz), "--out", str(out), *SCAN_ARGS),
                     "interrupted scan", "--resume")
    assert_bad_input(invoke("scan", str(model), "--data", str(npz), "--out", str(out), "--resume", "--seed", "9",
                            *SCAN_ARGS), "other settings")
    resumed = invoke("scan", str(model), "--data", str(npz), "--out", str(out), "--resume", *SCAN_ARGS)
    assert resumed.exit_code in (EXIT_CLEAN, EXIT_INFECTED), resumed.output
    got, want = (json.loads((d / "report.json").read_text()) for d in (out, reference))
    assert got["l1_norms"] == want["l1_norms"] and got["flagged"] == want["flagged"]
    assert not (out / ".scan-state.pt").exists()


def test_killed_process_resumes(cli_model, tmp_path) -> None:
    """SIGKILL, no chance to clean up: the state saved as labels finished is enough to go on."""
    model, npz = cli_model
    args = ["--data", str(npz), "--preset", "original", "--max-steps", "25", *SCAN_ARGS]
    reference = tmp_path / "reference"
    invoke("scan", str(model), "--out", str(reference), *args)
    out = tmp_path / "scan"
    state = out / ".scan-state.pt"
    proc = subprocess.Popen([str(EXE), "-q", "scan", str(model), "--out", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    first = None
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            stamp = state.stat().st_mtime_ns
            first = first or stamp
            if stamp != first:  # rewritten: at least one label finished
                break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail("the scan finished before it could be killed; make it longer")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "report.json").exists()
    resumed = invoke("scan", str(model), "--out", str(out), "--resume", *args)
    assert resumed.exit_code in (EXIT_CLEAN, EXIT_INFECTED), resumed.output
    got, want = (json.loads((d / "report.json").read_text()) for d in (out, reference))
    assert got["l1_norms"] == want["l1_norms"] and got["flagged"] == want["flagged"]


def test_json_prints_the_report(cli_model, tmp_path) -> None:
    model, npz = cli_model
    out = tmp_path / "scan"
    result = invoke("scan", str(model), "--data", str(npz), "--out", str(out), "--json", *SCAN_ARGS)
    assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED)
    printed = json.loads(result.stdout)
    assert printed == json.loads((out / "report.json").read_text())
    assert "verdict:" in result.stderr and "verdict:" not in result.stdout


def test_atomic_writes_get_ordinary_permissions(tmp_path) -> None:
    from neuralcleanse.files import write_atomic

    umask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "r.json", lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind
