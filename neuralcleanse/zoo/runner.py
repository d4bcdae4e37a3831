"""Runs a batch's jobs: in this process, in a pool of local processes, or as Ray tasks on a cluster.

Whatever runs them, results come back to this process, which alone writes the journal and the
summary, as models finish."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from neuralcleanse.detection.rules import VERDICTS
from neuralcleanse.errors import InputError
from neuralcleanse.files import run_folder_lock
from neuralcleanse.parallel import connect_ray, run_calls
from neuralcleanse.zoo import journal
from neuralcleanse.zoo.manifest import Job
from neuralcleanse.zoo.summary import SUMMARY_FILES, SUMMARY_JSON, write_summary
from neuralcleanse.zoo.worker import crash_row, scan_one

def check_batch_folder(out: str | Path, *, resume: bool = False, force: bool = False) -> None:
    """Refuses to overwrite silently, as `check_scan_folder` does for one scan."""
    out = Path(out)
    if force or resume:
        return
    if (out / SUMMARY_JSON).exists():
        raise InputError(f"{out} already holds a finished batch ({SUMMARY_JSON}); choose another `out`, "
                         "or add `force` to replace it")
    if (out / journal.JOURNAL_NAME).exists():
        raise InputError(f"{out} holds an interrupted batch; add `resume` to go on with it, or `force` to start "
                         "afresh")


def run_batch(jobs: Sequence[Job], out: str | Path, *, source: str, resume: bool = False, force: bool = False,
              workers: int = 1, ray_address: str | None = None, threads: int = 1,
              progress: bool = True) -> list[dict[str, Any]]:
    """Scans every job not already finished in `out`'s journal (under `resume`; models that ended in
    an error are tried again), then writes the summary. Returns the rows in `jobs` order."""
    out = Path(out)
    # Connected before anything is written, so a wrong address leaves no half-started batch behind.
    ray, connected_here = connect_ray(ray_address) if ray_address else (None, False)
    try:
        with run_folder_lock(out):  # one batch per folder: two would interleave their journals
            check_batch_folder(out, resume=resume, force=force)
            if force:  # inputs are known good by now: a typo must not cost the finished batch
                for name in SUMMARY_FILES:
                    (out / name).unlink(missing_ok=True)
            rows = _run(jobs, out / journal.JOURNAL_NAME, resume, force, workers, ray, threads, progress)
            write_summary(out, rows, source=source)
            return rows
    finally:
        if connected_here:
            ray.shutdown()


def _run(jobs: Sequence[Job], journal_path: Path, resume: bool, force: bool, workers: int, ray: Any, threads: int,
         progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    journal.start(journal_path, fresh=not resume)
    rows = finished_rows(jobs, journal.read(journal_path)) if resume else {}
    todo = [job for job in jobs if job.name not in rows]
    bar = tqdm(total=len(jobs), initial=len(rows), unit="model", desc="models", disable=not progress)

    def record(job: Job, row: dict[str, Any]) -> None:
        journal.append(journal_path, {"job": job.identity(), "row": row})
        rows[job.name] = row
        bar.update(1)

    kwargs = {"resume": resume, "force": force, "threads": threads}
    try:
        # One CPU per thread a worker uses, so Ray never puts more threads on a node than it has cores.
        run_calls(scan_one, [((job,), kwargs) for job in todo], workers=workers, ray=ray, cpus_per_call=threads,
                  on_done=lambda i, row: record(todo[i], row),
                  on_error=lambda i, exc: crash_row(todo[i], exc))  # the worker died: a segfault, no memory
    finally:
        bar.close()
    return [rows[job.name] for job in jobs]


def finished_rows(jobs: Sequence[Job], entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The journal's rows for `jobs` that need no new scan: the latest entry of each, unless it was an
    error. An entry made with other settings for the same model means another command: refused."""
    latest = {entry["job"].get("name"): entry for entry in entries}
    done = {}
    for job in jobs:
        entry = latest.get(job.name)
        if entry is None:
            continue
        if entry["job"] != job.identity():
            raise InputError(f"this batch scanned {job.model} as {job.name} with other settings or another file; "
                             "resume with exactly the same command, or start afresh with `force`")
        if _usable(entry["row"], job):
            done[job.name] = entry["row"]
    return done


def _usable(row: dict[str, Any], job: Job) -> bool:
    """A finished model's row, with the types the summary needs (the journal lies in a folder that
    others may write to); anything else is scanned again."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return (row.get("verdict") in VERDICTS and row.get("model") == job.model
            and isinstance(row.get("flagged"), list) and all(isinstance(v, int) for v in row["flagged"])
            and (row.get("anomaly_index") is None or number(row["anomaly_index"]))
            and number(row.get("wall_time_s")) and isinstance(row.get("report"), (str, type(None))))
