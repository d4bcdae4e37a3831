"""A small on-disk cache of decoded image arrays, so slow decodes happen once per machine."""
from __future__ import annotations

import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from neuralcleanse.files import write_atomic

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """$NEURALCLEANSE_CACHE, else $XDG_CACHE_HOME/neuralcleanse, else ~/.cache/neuralcleanse."""
    explicit = os.environ.get("NEURALCLEANSE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neuralcleanse"


def load_cached(name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or unreadable (a bad cache is rebuilt, never fatal)."""
    path = cache_dir() / name
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not set(keys) <= set(npz.files):
                raise KeyError(f"missing {sorted(set(keys) - set(npz.files))}")
            return {k: npz[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        log.warning("ignoring unreadable cache file %s (%s); rebuilding it", path, exc)
        return None


def save_cached(name: str, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically, so a crash or a concurrent reader never sees half a file.

    Failing to write (read-only home, full disk) only costs speed, so it is logged, not raised.
    """
    folder = cache_dir()

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object, not a name: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    try:
        write_atomic(folder / name, dump)
    except OSError as exc:
        log.warning("could not write cache file %s (%s); loading will stay slow", folder / name, exc)
