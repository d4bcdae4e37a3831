"""Where a named dataset lies when the user gives only its name: an environment variable, else the shared copy
beside a checkout of this project (for its tests and benchmarks)."""
from __future__ import annotations

import os
from pathlib import Path

from neuralcleanse.errors import InputError

_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_source(env_var: str, shared: Path, name: str, where_to_get: str) -> Path:
    """$`env_var` when set (it must exist), else `shared` (relative to the working folder or this checkout's
    folder) when there, else an InputError saying `where_to_get`."""
    env = os.environ.get(env_var)
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise InputError(f"${env_var} points at {path}, which does not exist; fix or unset it")
        return path
    for base in (Path.cwd(), _REPO_ROOT):
        candidate = (base / shared).resolve()
        if candidate.is_file():
            return candidate
    raise InputError(f"no {name} data found: {where_to_get}")
