"""The batch's journal: one JSON line per finished model, appended as results come in, so an
interrupted batch can go on (`--resume`) without scanning again what it already has."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.jsonl"
log = logging.getLogger(__name__)


def start(path: str | Path, fresh: bool) -> None:
    """An empty journal for a new batch; for a resumed one, a torn last line (a power cut) ended so
    that the next entry starts on a line of its own."""
    path = Path(path)
    if fresh or not path.exists():
        path.write_bytes(b"")
    elif path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def append(path: str | Path, entry: dict[str, Any]) -> None:
    """Adds `entry` as one line with a single write() on an O_APPEND file: a killed process leaves the
    line whole or absent, never half of it (read() also skips a torn last line, for power cuts)."""
    line = (json.dumps(entry, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str | Path) -> list[dict[str, Any]]:
    """The entries in order; lines that are not whole JSON objects are skipped with a warning (their
    models are scanned again)."""
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("job"), dict) and isinstance(entry.get("row"), dict):
            entries.append(entry)
        else:
            log.warning("%s line %d is damaged: that model is scanned again", path, number)
    return entries
