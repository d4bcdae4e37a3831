"""One model of a batch: what `neuralcleanse scan` does, returning a summary row instead of exiting.

Runs in the driver, in a local worker process or on a Ray node, so it takes and returns plain
picklable values and never raises for a bad model: the batch goes on with the others.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from neuralcleanse.errors import InputError
from neuralcleanse.zoo.manifest import MODELS_DIR, Job

# The options that load the model and data (options.load_model_and_data_from_flags's keywords);
# the others configure the scanner (NeuralCleanse; loss and max_steps override its preset's settings).
LOAD_OPTIONS = ("num_classes", "factory", "factory_kwargs", "trust_pickle", "input_layout", "labels_from_model",
                "pixel_range", "mean", "std", "channel_order")
SCAN_OPTIONS = ("preset", "samples", "labels", "loss", "max_steps", "rule", "threshold", "seed", "block_size",
                "schedule", "restarts", "device", "precision", "detectors")


def check_options(options: dict[str, Any]) -> None:
    """The checks `scan` makes on its flags before loading anything, so a typo stops a batch before
    it starts instead of failing every model."""
    from neuralcleanse.options import parse_ints, parse_preprocessing
    from neuralcleanse.models.formats.weights import parse_kwargs

    if not options.get("data_source"):
        raise InputError("no data to scan with: give `data_source` (or a `data` column in the manifest)")
    parse_preprocessing(options.get("pixel_range"), options.get("mean"), options.get("std"),
                        options.get("channel_order"))
    if options.get("labels"):
        parse_ints(options["labels"])
    parse_kwargs(options.get("factory_kwargs"))


def scan_one(job: Job, *, resume: bool = False, force: bool = False, threads: int = 1) -> dict[str, Any]:
    """Scans `job`'s model into `job.out` (going on with an interrupted scan there under `resume`,
    replacing one under `force`) and returns its summary row. Bad input becomes verdict "error"
    with the one-line message the command line would print; any other exception too, as a crash."""
    import torch

    from neuralcleanse.options import COMMON_FLAGS, PREPROCESSING_FLAGS, as_flags

    # N workers on N cores: more threads each would only make them fight over the cores.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with _warnings_kept() as warnings:
        try:
            row = _scan(job, resume, force)
        except InputError as exc:
            row = error_row(job, as_flags(str(exc), {**COMMON_FLAGS, **PREPROCESSING_FLAGS}))
        except Exception as exc:  # a bug, or a model that breaks torch: the others still get scanned
            row = crash_row(job, exc)
        finally:
            torch.set_num_threads(threads_before)  # when run in the caller's own process
    row["wall_time_s"] = round(time.perf_counter() - start, 3)
    row["warnings"] = [as_flags(w, {**COMMON_FLAGS, **PREPROCESSING_FLAGS}) for w in warnings]
    return row


def _scan(job: Job, resume: bool, force: bool) -> dict[str, Any]:
    from neuralcleanse.options import load_model_and_data_from_flags, parse_device, parse_ints
    from neuralcleanse.report.html_report import write_html_report
    from neuralcleanse.detection import NeuralCleanse
    from neuralcleanse.files import run_folder_lock
    from neuralcleanse.pipeline import scan_folder
    from neuralcleanse.report.scan_report import load_scan

    out = Path(job.out)
    opts = job.options
    settings = {k: opts.get(k) for k in SCAN_OPTIONS if opts.get(k) is not None}
    labels = parse_ints(settings.pop("labels")) if settings.get("labels") else None
    settings["device"] = parse_device(settings.get("device") or "cpu")
    if isinstance(settings.get("detectors"), str):
        settings["detectors"] = [d.strip() for d in settings["detectors"].split(",") if d.strip()]
    scanner = NeuralCleanse(settings.pop("preset", "fast"), progress=False, **settings)
    scan_folder(out, lambda: load_model_and_data_from_flags(job.path, opts["data_source"],
                                                            **{k: opts.get(k) for k in LOAD_OPTIONS}),
                scanner, labels=labels, resume_if_interrupted=resume, force=force, model_desc={"path": job.model},
                data_desc={"source": opts["data_source"]})
    with run_folder_lock(out):
        _, report = load_scan(out)
        page = write_html_report(out)
    return scan_row(job, report, page)


def scan_row(job: Job, report: dict[str, Any], page: Path) -> dict[str, Any]:
    norms = report["l1_norms"]
    settings = report.get("settings") or {}
    detectors = report.get("detectors") or {}
    tests = {f"{t}_{k}": (detectors.get(t) or {}).get(field) for t in ("nc", "noise", "mmbd")
             for k, field in (("label", "candidate"), ("p", "p_value"))}
    return {**_base_row(job), "verdict": report["verdict"], "flagged": list(report["flagged"]),
            "score": report.get("score"), **tests, "reason": (report.get("combined") or {}).get("reason"),
            "anomaly_index": report.get("anomaly_index"),
            "min_label": report["labels"][min(range(len(norms)), key=norms.__getitem__)],
            "num_classes": (report.get("model") or {}).get("num_classes"), "preset": settings.get("preset"),
            "rule": report["rule"]["name"], "threshold": report.get("threshold"), "error": None,
            "report": f"{MODELS_DIR}/{job.name}/{Path(page).name}"}


def error_row(job: Job, message: str) -> dict[str, Any]:
    return {**_base_row(job), "verdict": "error", "flagged": [], "anomaly_index": None, "min_label": None,
            "num_classes": job.options.get("num_classes"), "preset": job.options.get("preset"),
            "rule": job.options.get("rule"), "threshold": job.options.get("threshold"),
            "error": message.splitlines()[0] if message else "error", "report": None}


def crash_row(job: Job, exc: BaseException) -> dict[str, Any]:
    first = str(exc).strip().splitlines()
    return error_row(job, f"crash: {type(exc).__name__}: {first[0] if first else ''}".rstrip(": "))


def _base_row(job: Job) -> dict[str, Any]:
    return {"model": job.model, "name": job.name, "data": job.options.get("data_source")}


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _warnings_kept() -> Iterator[list[str]]:
    """The library's warnings during one model's scan (near-chance accuracy, the model's own labels
    used...), kept for its summary row: in a batch they would otherwise scroll past, or be lost in a
    worker's log."""
    handler = _Keep()
    logger = logging.getLogger("neuralcleanse")
    level = logger.level
    if logger.getEffectiveLevel() == logging.INFO:  # per-model info lines would bury the batch's progress bar
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
