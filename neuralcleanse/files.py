"""Files a run writes and reads: atomic writes (a report is either complete on disk or not there at
all), containment of paths named in shared folders, and one run per output folder at a time."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Calls write(tmp_path) then renames onto `path`, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")

    return write_atomic(path, dump)


def resolve_inside(root: str | Path, rel: str | Path) -> Path | None:
    """`root/rel` fully resolved, or None when it would leave `root`.

    Scan folders are shared and may be tampered with: a path recorded in them may be absolute,
    climb out with `..`, or pass through a symlink that points elsewhere. Resolving both sides
    (symlinks included) and comparing catches all three.
    """
    root_real = Path(root).resolve()
    try:
        target = (root_real / rel).resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loops, NUL bytes
        return None
    return target if target.is_relative_to(root_real) else None


LOCK_NAME = ".neuralcleanse.lock"
_held: dict[Path, list] = {}  # folder -> [lock, depth]: a run may take its own folder's lock again


@contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Holds `folder`'s lock for one run, so a second run on the same folder is refused at once
    instead of the two overwriting each other's state and reports.

    An OS-level lock (flock, via filelock): it is released when the process ends, however it
    ends, so a killed run never leaves the folder locked. The lock file itself stays; deleting it
    would race with a run taking it.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    entry = _held.get(key)
    if entry is None:
        lock = FileLock(str(key / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            from neuralcleanse.errors import InputError

            raise InputError(f"{folder} is in use by another neuralcleanse run; wait for it to finish, or "
                             "choose another output folder") from None
        entry = _held[key] = [lock, 0]
    entry[1] += 1
    try:
        yield
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            entry[0].release()
