"""The list of models a batch scans: every model file of a folder, or the rows of a CSV/JSONL manifest.

A manifest has a `model` column (a path; relative paths are read from the manifest's folder) and,
optionally, columns that set a scan option for that row only (the option's flag without dashes:
`num_classes`, `pixel_range`, `max_steps`...). An empty cell (or a JSON null) keeps the command's value.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from neuralcleanse.errors import InputError

# The loader recognises most formats by their content; these are the names model files go by
# (README "Models": checkpoints and TorchScript .pt/.pth, torch.export .pt2, ONNX, safetensors).
MODEL_SUFFIXES = (".pt", ".pth", ".pt2", ".onnx", ".safetensors")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
DATA_KEYWORDS = ("mnist", "gtsrb", "cifar10", "cifar-10")  # load_dataset reads these as names, never as paths
MODELS_DIR = "models"  # each model's scan folder is OUT/models/<name>


@dataclass
class Job:
    """One model to scan: `model` as the user wrote it, `path` where it is read (absolute, so that
    workers started elsewhere read the same file), `out` its scan folder and `options` the scan
    options by the scan command's parameter names."""

    model: str
    path: str
    name: str
    out: str
    options: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its --resume."""
        return {k: v for k, v in asdict(self).items() if k != "out"}


# A manifest column: the scan option it sets and how its text becomes the option's value (raises
# InputError when it cannot).
Column = tuple[str, Callable[[str], Any]]


def read_jobs(source: str | Path, out: str | Path, defaults: Mapping[str, Any], columns: Mapping[str, Column],
              command_line_only: Iterable[str] = ()) -> list[Job]:
    """The jobs of a model folder or a manifest file, each with `defaults` overridden by its row."""
    src = Path(source)
    if src.is_dir():
        models = sorted(p for p in src.iterdir()
                        if p.suffix.lower() in MODEL_SUFFIXES and not p.name.startswith(".") and p.is_file())
        if not models:
            raise InputError(f"folder {src} holds no model files ({', '.join(MODEL_SUFFIXES)}); sub-folders are "
                             "not searched")
        rows = [(str(p), {}) for p in models]
        base = Path.cwd()
    elif src.is_file():
        rows = _manifest_rows(src, columns, set(command_line_only))
        base = src.parent
    else:
        raise InputError(f"{src} not found; give a folder of model files or a .csv/.jsonl manifest")
    names = _unique_names(Path(model).name for model, _ in rows)
    jobs = []
    for (model, overrides), name in zip(rows, names):
        options = {**defaults, **overrides}
        data = options.get("data_source")
        if data and "data_source" in overrides:
            options["data_source"] = _absolute(data, base)
        elif data:
            options["data_source"] = _absolute(data, Path.cwd())
        jobs.append(Job(model=model, path=os.path.abspath(base / model), name=name,
                        out=os.path.abspath(Path(out) / MODELS_DIR / name), options=options))
    return jobs


def _absolute(data: str, base: Path) -> str:
    """A data path as an absolute path (workers may run in another folder); dataset names as they are."""
    if data.strip().lower() in DATA_KEYWORDS:
        return data
    return os.path.abspath(base / Path(data).expanduser())


def _manifest_rows(path: Path, columns: Mapping[str, Column], command_line_only: set[str]
                   ) -> list[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(f"{path} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often start CSV files with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from None
    raw = _csv_rows(path, text) if suffix == ".csv" else _jsonl_rows(path, text)
    if not raw:
        raise InputError(f"manifest {path} lists no models")
    found = {_column_name(k) for _, row in raw for k in row}
    refused = sorted(found & command_line_only)
    if refused:
        raise InputError(f"manifest {path}: column(s) {', '.join(refused)} can only be given on the command line "
                         "(they run code: docs/security.md)")
    unknown = sorted(found - set(columns) - {"model"})
    if unknown:
        raise InputError(f"manifest {path}: unknown column(s) {', '.join(unknown)}; known: model, "
                         f"{', '.join(sorted(columns))}")
    rows = []
    for where, row in raw:
        cells = {_column_name(k): v for k, v in row.items()}
        model = cells.pop("model", None)
        if not isinstance(model, str) or not model.strip():
            raise InputError(f"manifest {path}, {where}: no model path in the `model` column")
        overrides = {}
        for column, value in cells.items():
            text = _cell_text(value)
            if text is None:
                continue
            option, convert = columns[column]
            try:
                overrides[option] = convert(text)
            except InputError as exc:
                raise InputError(f"manifest {path}, {where}, column {column}: {exc}") from None
        rows.append((model.strip(), overrides))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "model" not in {_column_name(f) for f in reader.fieldnames}:
        raise InputError(f"manifest {path} needs a header row with a `model` column")
    rows = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:  # DictReader files cells past the header under None
            raise InputError(f"manifest {path}, {where}: more cells than the header has columns")
        if any(v and v.strip() for v in row.values()):
            rows.append((where, row))
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"manifest {path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"manifest {path}, line {number}: each line must be a JSON object")
        rows.append((f"line {number}", row))
    return rows


def _column_name(name: Any) -> str:
    return str(name).strip().lower().replace("-", "_")


def _cell_text(value: Any) -> str | None:
    """A cell as the text a flag would get: lists (JSONL) joined with commas, as --labels 0,3 or
    --mean 0.5,0.5 take them; None or empty means "not set"."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _unique_names(file_names: Iterable[str]) -> list[str]:
    """Folder names from model file names: safe characters only (names come from strangers and end
    up in paths and links), and unique even on case-insensitive file systems (a.pt, a.onnx → a, a-2)."""
    names: list[str] = []
    taken: set[str] = set()
    for file_name in file_names:
        stem = file_name
        for suffix in MODEL_SUFFIXES:
            if stem.lower().endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:80] or "model"
        name, n = base, 1
        while name.lower() in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
        names.append(name)
    return names
