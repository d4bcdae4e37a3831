"""Checks for the files a scan or mitigation folder holds, which may come from anyone.

Users share scan folders. Every reader goes through these checks first, so a truncated,
tampered, NaN-filled or oversized file is refused with one clear InputError instead of a crash
deep inside, a wrong verdict, or minutes of work before the failure.
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.detection.combined import TESTS, CombineRule
from neuralcleanse.detection.rules import VERDICTS, Rule
from neuralcleanse.errors import InputError

MAX_JSON_BYTES = 64 * 2**20
MAX_LABELS = 100_000
MAX_SIDE = 4096
MAX_ARRAY_BYTES = 4 * 2**30


class _Bad(Exception):
    """One field is wrong; the message says which."""


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, size-capped, with NaN/Infinity refused (JSON has neither)."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise InputError(f"{path} is {size / 2**20:.0f} MiB, more than any report this tool writes; "
                             "it is not a report of this tool")
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except InputError:
        raise
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"cannot read {path}: {_short(exc)}; run the command that wrote it again") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object; run the command that wrote it again")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def check_scan_report(report: dict[str, Any], path: Path, partial: bool = False) -> None:
    """The fields a ScanResult is rebuilt from, with their types, lengths and ranges. `partial`: a
    report without triggers.npz (scans before 0.2), of which only the page is made: the fields it
    has are checked, missing ones are shown as missing."""
    try:
        if partial and "labels" not in report:
            labels = []
        else:
            labels = _int_list(report, "labels", minimum=0)
            if not (partial or 3 <= len(labels)) or len(labels) > MAX_LABELS:
                raise _Bad(f"'labels' holds {len(labels)} labels (3..{MAX_LABELS} expected)")
        if len(set(labels)) != len(labels):
            raise _Bad("'labels' repeats a label")
        n = len(labels)
        if not partial or "l1_norms" in report:
            _num_list(report, "l1_norms", n, low=0.0)
        if not partial or "success_rates" in report:
            _num_list(report, "success_rates", n, low=0.0, high=1.0)
        if not partial or "reached_threshold" in report:
            _typed_list(report, "reached_threshold", n, bool)
        if not partial or "steps" in report:
            steps = _int_list(report, "steps", minimum=0)
            if len(steps) != n:
                raise _Bad(f"'steps' has {len(steps)} entries for {n} labels")
        if not partial or "flagged" in report:
            flagged = _int_list(report, "flagged", minimum=0)
            if not set(flagged) <= set(labels):
                raise _Bad("'flagged' names labels that were not scanned")
        if report.get("reference_labels") is not None:
            reference = _int_list(report, "reference_labels", minimum=0)
            if len(reference) < 3 or not set(reference) <= set(labels):
                raise _Bad("'reference_labels' must name at least 3 of the scanned labels")
        tested = report.get("tested_labels", n)
        if not isinstance(tested, int) or isinstance(tested, bool) or not n <= tested <= MAX_LABELS:
            raise _Bad(f"'tested_labels' is not a whole number in {n}..{MAX_LABELS}")
        _number(report, "threshold", low=0.0, optional=True, open_low=True)
        _number(report, "wall_time_s", low=0.0, optional=True)
        passes = report.get("image_passes", 0)
        if not isinstance(passes, int) or isinstance(passes, bool) or passes < 0:
            raise _Bad("'image_passes' is not a whole number of at least 0")
        if "infected" in report and not isinstance(report["infected"], bool):
            raise _Bad("'infected' is not true or false")
        if "verdict" in report and report["verdict"] not in VERDICTS:
            raise _Bad(f"'verdict' is {str(report['verdict'])[:30]!r}, not one of {', '.join(VERDICTS)}")
        if "rule" in report:
            try:
                Rule.from_dict(report["rule"])
            except ValueError as exc:
                raise _Bad(f"'rule': {exc}") from None
        if "detectors" in report:
            _check_detectors(report)
        for key in ("settings", "images", "model", "data", "tool"):
            if key in report and not isinstance(report[key], dict):
                raise _Bad(f"'{key}' is not an object")
        if "chart" in report and not isinstance(report["chart"], str):
            raise _Bad("'chart' is not a file name")
    except _Bad as exc:
        raise InputError(f"{path} is damaged or was edited: {exc}; run the scan again") from None


def _check_detectors(report: dict[str, Any]) -> None:
    """The second opinions' evidence and the combined verdict (scans since 0.10)."""
    detectors, combined = report["detectors"], report.get("combined")
    if not isinstance(detectors, dict) or not isinstance(combined, dict) or "nc" not in detectors:
        raise _Bad("'detectors' and 'combined' must be objects, with Neural Cleanse's evidence among the detectors")
    for name, e in detectors.items():
        if name not in TESTS:
            raise _Bad(f"'detectors' names a test {str(name)[:20]!r}, not one of {', '.join(TESTS)}")
        if not isinstance(e, dict):
            raise _Bad(f"'detectors.{name}' is not an object")
        if e.get("test") != name:
            raise _Bad(f"'detectors.{name}.test' does not name its test")
        labels = _int_list(e, "labels", minimum=0)
        if len(labels) > MAX_LABELS:
            raise _Bad(f"'detectors.{name}' holds too many labels")
        scores = e.get("scores")
        if not isinstance(scores, list) or len(scores) != len(labels) or not all(
                v is None or (_is_real(v)) for v in scores):
            raise _Bad(f"'detectors.{name}.scores' is not one number (or null) per label")
        _check_number(e.get("alpha"), f"detectors.{name}.alpha", 0.0, 1.0)
        if e.get("p_value") is not None:
            _check_number(e["p_value"], f"detectors.{name}.p_value", 0.0, 1.0)
        cand = e.get("candidate")
        if cand is not None and (not isinstance(cand, int) or isinstance(cand, bool) or cand not in labels):
            raise _Bad(f"'detectors.{name}.candidate' is not one of its labels")
        if "details" in e and not isinstance(e["details"], dict):
            raise _Bad(f"'detectors.{name}.details' is not an object")
    if "rule" in combined:
        try:
            CombineRule.from_dict(combined["rule"])
        except ValueError as exc:
            raise _Bad(f"'combined.rule': {exc}") from None
    _number(report, "score", optional=True)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_mitigation_report(report: dict[str, Any], path: Path) -> None:
    """What the page shows of a mitigation.json: its method, labels and measurements."""
    from neuralcleanse.mitigation.runner import METHODS

    try:
        if report.get("method") not in METHODS:
            raise _Bad(f"'method' is {str(report.get('method'))[:40]!r}, not one of {', '.join(METHODS)}")
        _int_list(report, "labels", minimum=0)
        for key in ("before", "after"):
            _measurement(report.get(key), key)
        baselines = report.get("baselines", {})
        if not isinstance(baselines, dict):
            raise _Bad("'baselines' is not an object")
        for name, value in baselines.items():
            _measurement(value, f"baselines.{name}")
        if "verdict" in report and not isinstance(report["verdict"], str):
            raise _Bad("'verdict' is not text")
        for key in ("settings", "files", "model", "data", "tool", "filter", "pruning", "unlearning",
                    "reversed_trigger", "rescan"):
            if key in report and not isinstance(report[key], dict):
                raise _Bad(f"'{key}' is not an object")
        if not all(isinstance(v, str) for v in report.get("files", {}).values()):
            raise _Bad("'files' holds a value that is not a file name")
        for key in ("before", "after"):
            if key in report.get("reversed_trigger", {}):
                _measurement(report["reversed_trigger"][key], f"reversed_trigger.{key}")
    except _Bad as exc:
        raise InputError(f"{path} is damaged or was edited: {exc}; run the mitigation again") from None


def check_triggers_file(path: Path, labels: list[int]) -> None:
    """triggers.npz's array headers, read before any array is: a tampered file could declare an
    enormous array (or an object array, which numpy would refuse to unpickle anyway)."""
    try:
        headers = npz_headers(path)
        expected = {"labels": 1, "masks": 3, "patterns": 4}
        for name, ndim in expected.items():
            if name not in headers:
                raise _Bad(f"it has no '{name}' array")
            shape, dtype = headers[name]
            if len(shape) != ndim:
                raise _Bad(f"'{name}' has shape {shape}, expected {ndim} dimensions")
            if dtype.hasobject:
                raise _Bad(f"'{name}' holds Python objects")
        (l_shape, l_type), (m_shape, m_type), (p_shape, p_type) = (headers[k] for k in expected)
        if not np.issubdtype(l_type, np.integer):
            raise _Bad("'labels' is not an integer array")
        if not (np.issubdtype(m_type, np.floating) and np.issubdtype(p_type, np.floating)):
            raise _Bad("masks and patterns must be float arrays")
        n = len(labels)
        if l_shape != (n,) or m_shape[0] != n or p_shape[0] != n:
            raise _Bad(f"its arrays do not hold one entry per scanned label ({n})")
        h, w = m_shape[1:]
        if p_shape[2:] != (h, w) or p_shape[1] not in (1, 3) or not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            raise _Bad(f"masks {m_shape} and patterns {p_shape} do not fit images")
    except _Bad as exc:
        raise InputError(f"the scan in {path.parent} is damaged ({path.name}: {exc}); run the scan again") from None


def check_trigger_values(masks: np.ndarray, patterns: np.ndarray, path: Path) -> None:
    for name, arr in (("masks", masks), ("patterns", patterns)):
        if not np.isfinite(arr).all() or arr.min(initial=0.0) < 0.0 or arr.max(initial=0.0) > 1.0:
            raise InputError(f"the scan in {path.parent} is damaged ({path.name}: {name} must be finite and lie "
                             "in [0, 1]); run the scan again")


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array in an .npz, from the .npy headers alone."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
                    raise _Bad(f"'{info.filename[:-4]}' declares {shape}, far more than a scan writes")
                out[info.filename[:-4]] = (tuple(int(v) for v in shape), dtype)
    except _Bad:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _Bad(f"not a readable .npz ({_short(exc)})") from None
    return out


def _int_list(d: dict, key: str, minimum: int | None = None) -> list[int]:
    values = d.get(key)
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _Bad(f"'{key}' is not a list of whole numbers")
    if minimum is not None and any(v < minimum for v in values):
        raise _Bad(f"'{key}' holds a value below {minimum}")
    return values


def _typed_list(d: dict, key: str, n: int, kind: type) -> list:
    values = d.get(key)
    if not isinstance(values, list) or len(values) != n or not all(isinstance(v, kind) for v in values):
        raise _Bad(f"'{key}' is not a list of {n} {kind.__name__} values")
    return values


def _num_list(d: dict, key: str, n: int, low: float | None = None, high: float | None = None) -> list[float]:
    values = d.get(key)
    if not isinstance(values, list) or len(values) != n:
        raise _Bad(f"'{key}' is not a list of {n} numbers")
    for v in values:
        _check_number(v, key, low, high)
    return values


def _number(d: dict, key: str, low: float | None = None, optional: bool = False, open_low: bool = False) -> None:
    if key not in d and optional:
        return
    _check_number(d.get(key), key, low, None, open_low)


def _check_number(v: Any, key: str, low: float | None, high: float | None, open_low: bool = False) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise _Bad(f"'{key}' holds {str(v)[:20]!r}, not a finite number")
    if low is not None and (v <= low if open_low else v < low):
        raise _Bad(f"'{key}' holds {v}, below its range")
    if high is not None and v > high:
        raise _Bad(f"'{key}' holds {v}, above its range")


def _measurement(m: Any, where: str) -> None:
    if not isinstance(m, dict):
        raise _Bad(f"'{where}' is not an object")
    _check_number(m.get("clean_accuracy"), f"{where}.clean_accuracy", 0.0, 1.0)
    rates = m.get("attack_success")
    if not isinstance(rates, list):
        raise _Bad(f"'{where}.attack_success' is not a list")
    for r in rates:
        if not isinstance(r, dict) or not isinstance(r.get("target"), int) or isinstance(r.get("target"), bool):
            raise _Bad(f"'{where}.attack_success' holds an entry without a whole-number target")
        if r.get("rate") is not None:  # NaN (no input of another label) is written as null
            _check_number(r.get("rate"), f"{where}.attack_success.rate", 0.0, 1.0)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
