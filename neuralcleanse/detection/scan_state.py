"""The saved state of an interrupted scan: an append-only journal, one record per finished label.

A scan of 1,000 labels on 28x84 images holds ~80 MB of per-label tensors. Rewriting all of it each
time a label finishes wrote ~80 GB over a scan; appending only the label that finished writes each
label's ~80 kB once (twice under the coarse-to-fine schedule), so the cost grows with the labels
done, not with labels squared.

Layout: MAGIC, then records, each `length (8 bytes, big-endian) | SHA-256 of the payload | payload`,
the payload a `torch.save`d dict read back with `weights_only=True` (no code runs on load). The
first record is the header (format, fingerprint, block size); later ones are a label's state or
the schedule's choice. A record cut short by a crash fails its length or checksum and ends the
journal there; it is cut off before anything is appended again.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from neuralcleanse.errors import InputError

STATE_FORMAT = "neuralcleanse-scan-state"
MAGIC = b"NCSTATE2\n"
_HEAD = 8 + 32
MAX_RECORD = 1 << 30  # no label's state comes near 1 GB; a larger length is damage


def _encode(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(record, buf)
    payload = buf.getvalue()
    return len(payload).to_bytes(8, "big") + hashlib.sha256(payload).digest() + payload


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The journal's whole records and the byte length they take (a torn tail is left out).
    Raises ValueError for a file that is not a journal or a record that does not load."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError("not a scan state journal")
    records, at = [], len(MAGIC)
    while at + _HEAD <= len(data):
        length = int.from_bytes(data[at:at + 8], "big")
        payload = data[at + _HEAD: at + _HEAD + length]
        if length > MAX_RECORD or len(payload) != length or hashlib.sha256(payload).digest() != data[at + 8: at + _HEAD]:
            break
        try:
            record = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a refused or damaged payload
            raise ValueError(f"a record does not load ({str(exc).splitlines()[0][:80]})") from None
        if not isinstance(record, dict):
            raise ValueError("a record is not a dictionary")
        records.append(record)
        at += _HEAD + length
    return records, at


def write_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    """A fresh journal holding `records` (the first one the header)."""
    from neuralcleanse.files import write_atomic

    write_atomic(path, lambda tmp: Path(tmp).write_bytes(MAGIC + b"".join(_encode(r) for r in records)))


class ScanJournal:
    """Appends records to the state file of one scan."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start(self, fingerprint: str, block_size: int | None) -> None:
        write_records(self.path, [{"format": STATE_FORMAT, "fingerprint": fingerprint, "block_size": block_size}])

    def reopen(self, valid_bytes: int) -> None:
        """Drops a torn tail left by a crash, so new records follow whole ones."""
        with open(self.path, "r+b") as fh:
            fh.truncate(valid_bytes)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "ab") as fh:
            fh.write(_encode(record))
            fh.flush()
            os.fsync(fh.fileno())


def load_journal(path: str | Path, fingerprint: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The header, the later records and the valid length of an interrupted scan's journal.
    Every problem is an InputError that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"there is no interrupted scan to resume in {path.parent} (no {path.name}); "
                         "run the scan without `resume`")
    try:
        records, valid = read_records(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"the saved scan state {path} is damaged ({exc}); "
                         "run the scan again without `resume` (add `force`)") from None
    if not records or records[0].get("format") != STATE_FORMAT:
        raise InputError(f"{path} is not a saved scan state")
    header = records[0]
    block = header.get("block_size")
    if block is not None and (not isinstance(block, int) or isinstance(block, bool) or not 1 <= block <= 1_000_000):
        raise InputError(f"the saved scan state {path} is damaged (block size {str(block)[:20]}); "
                         "start afresh without `resume` (add `force`)")
    if header.get("fingerprint") != fingerprint:
        raise InputError(f"the interrupted scan in {path.parent} was made with another model, other data or "
                         "other settings; resume with exactly the same command, or start afresh with `force`")
    return header, records[1:], valid
