"""The scan as the CLI and the demo run it: check the model on the data, scan, write the report."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence


from neuralcleanse.data.dataset import DatasetSplits, ImageDataset
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.detection.scanner import NeuralCleanse
from neuralcleanse.files import resolve_inside, run_folder_lock
from neuralcleanse.models.classifier import Classifier
from neuralcleanse.errors import InputError
from neuralcleanse.report.scan_report import REPORT_NAME, write_scan_report

log = logging.getLogger(__name__)


STATE_NAME = ".scan-state.pt"


def check_scan_folder(out: str | Path, *, resume: bool = False, force: bool = False) -> bool:
    """Refuses to overwrite silently. Returns True when `out` already holds the finished scan that
    `resume` asks to continue (nothing left to do)."""
    out = Path(out)
    if (out / "triggers").exists() and resolve_inside(out, "triggers") is None:
        raise InputError(f"{out / 'triggers'} leads outside {out} (a symbolic link?); the scan writes only inside "
                         "its `out` folder: remove it or choose another folder")
    finished, interrupted = (out / REPORT_NAME).exists(), (out / STATE_NAME).exists()
    if force:
        return False
    if resume:
        if finished and not interrupted:
            return True
        return False
    if finished:
        raise InputError(f"{out} already holds a finished scan ({REPORT_NAME}); choose another `out`, "
                         "or add `force` to replace it")
    if interrupted:
        raise InputError(f"{out} holds an interrupted scan; add `resume` to go on with it, or `force` to start afresh")
    return False


def run_scan(model: Classifier, data: ImageDataset, out: str | Path, scanner: NeuralCleanse | None = None, *,
             labels: Sequence[int] | None = None, resume: bool = False, model_desc: dict[str, Any] | None = None,
             data_desc: dict[str, Any] | None = None) -> ScanResult:
    """Scans and writes the report into `out`. The scan's state is saved in `out` as labels finish
    and removed once the report is written; `resume=True` goes on from it."""
    scanner = scanner or NeuralCleanse()
    state = Path(out) / STATE_NAME
    with run_folder_lock(out):
        if not resume and state.exists():
            state.unlink()  # the caller allowed starting afresh
        result = scanner.scan(model, data, labels=labels, checkpoint=state, resume=resume)
        _write(result, model, data, out, model_desc, data_desc)
        state.unlink(missing_ok=True)
    return result


def scan_folder(out: str | Path, load: Callable[[], tuple[Classifier, DatasetSplits]],
                scanner: NeuralCleanse | None = None, *, labels: Sequence[int] | None = None, resume: bool = False,
                force: bool = False, resume_if_interrupted: bool = False, model_desc: dict[str, Any] | None = None,
                data_desc: dict[str, Any] | None = None) -> tuple[ScanResult, dict[str, Any] | None]:
    """What `scan` does with its `out` folder, for the command and for each model of `scan-many`.

    A finished scan that `resume` asks to continue is only read back (its report is returned too);
    otherwise `load()` gives the model and data, checked before the folder is touched (a typo must
    not cost a finished scan), and the folder check is repeated under the folder's lock, since
    another run may have finished meanwhile. `resume_if_interrupted`: resume only where an
    interrupted scan lies, else start (a batch's --resume covers models never started)."""
    from neuralcleanse.report.scan_report import load_scan

    if resume_if_interrupted:
        resume = (Path(out) / STATE_NAME).exists() or (Path(out) / REPORT_NAME).exists()
    if check_scan_folder(out, resume=resume, force=force):
        with run_folder_lock(out):  # a --force scan running there would be replacing what is read
            return load_scan(out)
    model, data = load()
    with run_folder_lock(out):
        check_scan_folder(out, resume=resume, force=force)
        if force:
            (Path(out) / REPORT_NAME).unlink(missing_ok=True)
        return run_scan(model, data.test, out, scanner, labels=labels, resume=resume, model_desc=model_desc,
                        data_desc=data_desc), None


def _write(result: ScanResult, model: Classifier, data: ImageDataset, out: str | Path,
           model_desc: dict[str, Any] | None, data_desc: dict[str, Any] | None) -> None:
    info = model.info
    model_fields = {
        "source": info.source, "arch": info.arch, "num_classes": info.num_classes,
        "input_shape": list(info.input_shape), "preprocessing": info.preprocessing.to_dict(),
        "clean_accuracy_on_scan_data": result.settings.get("clean_accuracy"),
        "output_kind": result.settings.get("output_kind"), **(model_desc or {}),
    }
    backdoor = info.metadata.get("backdoor")
    if backdoor:
        model_fields["known_backdoor_targets"] = list(backdoor.get("targets", []))
    write_scan_report(result, out, model=model_fields,
                      data={"name": data.name, "samples_available": len(data), **(data_desc or {})})
