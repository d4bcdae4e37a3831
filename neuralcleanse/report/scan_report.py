"""A scan's results on disk: report.json, trigger images and the norms chart."""
from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from neuralcleanse import __version__
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.report.files import write_json
from neuralcleanse.report.images import save_norms_chart, save_trigger_images

REPORT_NAME = "report.json"


def write_scan_report(result: ScanResult, out_dir: str | Path, *, model: dict[str, Any] | None = None,
                      data: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    images = out / "triggers"
    files = {}
    for i, label in enumerate(result.labels):
        files[str(label)] = {k: f"triggers/{v}" for k, v in
                             save_trigger_images(result.masks[i], result.patterns[i], images, label).items()}
    save_norms_chart(result.labels, result.l1_norms, result.flagged, result.outliers.median, result.outliers.mad,
                     result.outliers.threshold, out / "norms.png")
    report = {
        "tool": {"name": "neuralcleanse", "version": __version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model or {},
        "data": data or {},
        **result.to_dict(),
        "images": files,
        "chart": "norms.png",
    }
    return write_json(out / REPORT_NAME, report)
