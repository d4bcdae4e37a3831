"""Reader for the IDX format MNIST is distributed in (http://yann.lecun.com/exdb/mnist/)."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from neuralcleanse.errors import InputError

# Type codes from the IDX specification; multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip-compressed when the name ends in .gz)."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read IDX file {path}: {exc}; re-download it") from exc
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, where: str = "IDX data") -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise InputError(f"{where} is not an IDX file (bad magic number); re-download it")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise InputError(f"{where} has unknown IDX type code 0x{code:02x}; re-download it")
    if ndim == 0:
        raise InputError(f"{where} declares 0 dimensions; re-download it")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{where} is truncated inside its header; re-download it")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise InputError(
            f"{where} should hold {expected} data bytes for shape {dims} but holds "
            f"{len(raw) - header}; the file is truncated or corrupt, re-download it"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)
