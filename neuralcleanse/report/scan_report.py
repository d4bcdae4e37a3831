"""A scan's results on disk: report.json, trigger images and the norms chart."""
from __future__ import annotations

import platform
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralcleanse._version import __version__
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.errors import InputError
from neuralcleanse.files import resolve_inside, write_atomic, write_json
from neuralcleanse.report.images import save_norms_chart, save_trigger_images
from neuralcleanse.report.validate import (check_scan_report, check_trigger_values, check_triggers_file,
                                          read_json_object)

REPORT_NAME = "report.json"
TRIGGERS_NAME = "triggers.npz"  # exact float masks and patterns; the PNGs are only for people


def report_header() -> dict[str, Any]:
    """What every report JSON starts with: the tool that wrote it and when."""
    return {
        "tool": {"name": "neuralcleanse", "version": __version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_scan_report(result: ScanResult, out_dir: str | Path, *, model: dict[str, Any] | None = None,
                      data: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    images = out / "triggers"
    if resolve_inside(out, "triggers") is None:  # a folder someone prepared could link elsewhere
        raise InputError(f"{images} leads outside {out} (a symbolic link?); the scan writes only inside its "
                         "`out` folder: remove it or choose another folder")
    files = {}
    for i, label in enumerate(result.labels):
        files[str(label)] = {k: f"triggers/{v}" for k, v in
                             save_trigger_images(result.masks[i], result.patterns[i], images, label).items()}
    save_norms_chart(result.labels, result.l1_norms, result.flagged, float(np.median(result.l1_norms)),
                     result.rule.cut(result.outliers), result.outliers.threshold, out / "norms.png")
    write_atomic(out / TRIGGERS_NAME, lambda tmp: _save_triggers(result, tmp))
    report = {
        **report_header(),
        "model": model or {},
        "data": data or {},
        **result.to_dict(),
        "images": files,
        "chart": "norms.png",
        "triggers_file": TRIGGERS_NAME,
    }
    return write_json(out / REPORT_NAME, report)


def _save_triggers(result: ScanResult, path: str) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(f, labels=np.asarray(result.labels, dtype=np.int64),
                            masks=result.masks.detach().cpu().float().numpy(),
                            patterns=result.patterns.detach().cpu().float().numpy())


def load_scan(scan_dir: str | Path) -> tuple[ScanResult, dict[str, Any]]:
    """The ScanResult a scan wrote to `scan_dir`, and its whole report.json, after checking both
    files (a scan folder may come from anyone: see neuralcleanse.report.validate)."""
    folder = Path(scan_dir)
    report_path, triggers_path = folder / REPORT_NAME, folder / TRIGGERS_NAME
    if not report_path.is_file():
        raise InputError(f"{folder} holds no {REPORT_NAME}; give the `out` folder of a finished scan")
    report = read_json_object(report_path)
    check_scan_report(report, report_path)
    if not triggers_path.is_file():
        raise InputError(f"{folder} has no {TRIGGERS_NAME} (written by scans since 0.2); run the scan again")
    check_triggers_file(triggers_path, report["labels"])
    try:
        with np.load(triggers_path, allow_pickle=False) as z:
            labels, masks, patterns = z["labels"].tolist(), z["masks"], z["patterns"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"the scan in {folder} is damaged ({TRIGGERS_NAME}: {exc}); run the scan again") from None
    if labels != report["labels"]:
        raise InputError(f"the scan in {folder} is damaged ({TRIGGERS_NAME}: its labels differ from "
                         f"{REPORT_NAME}'s); run the scan again")
    check_trigger_values(masks, patterns, triggers_path)
    result = ScanResult.from_dict(report, torch.from_numpy(masks).float(), torch.from_numpy(patterns).float())
    if "verdict" in report and report["verdict"] != result.verdict:
        raise InputError(f"{report_path} was edited: its verdict {report['verdict']!r} does not follow from its "
                         f"norms and rule (which give {result.verdict!r}); run the scan again")
    if "flagged" in report and sorted(result.flagged) != sorted(report["flagged"]):
        raise InputError(f"{report_path} was edited: its flagged labels {report['flagged']} do not follow from "
                         f"its norms (which flag {result.flagged}); run the scan again")
    return result, report
