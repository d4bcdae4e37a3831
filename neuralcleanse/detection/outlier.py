"""MAD outlier analysis of the reversed triggers' L1 norms."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

CONSISTENCY = 1.4826  # makes the MAD estimate the standard deviation of normal data


@dataclass(frozen=True)
class OutlierResult:
    """`mad` is the raw median absolute deviation; the published code prints 1.4826·MAD
    (`consistent_mad`), e.g. 13.24 for its GTSRB example whose raw MAD is 8.93."""

    median: float
    mad: float
    min_norm: float
    anomaly_index: float
    label_indices: list[float] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)
    threshold: float = 2.0

    @property
    def infected(self) -> bool:
        return bool(self.flagged)

    @property
    def consistent_mad(self) -> float:
        return CONSISTENCY * self.mad


def mad_outliers(norms: Sequence[float], threshold: float = 2.0) -> OutlierResult:
    """anomaly index = |min − median| / (1.4826·MAD), flagging norms below the median over `threshold`.

    The ordinary median is used (mean of the two middle values for an even count). A zero MAD
    (at least half of the norms equal) makes every differing norm infinitely anomalous, which is
    what the formula says; callers see `inf`.
    """
    values = np.asarray(norms, dtype=np.float64)
    if values.ndim != 1 or values.size < 3:
        raise ValueError("outlier analysis needs the norms of at least 3 labels")
    if not np.all(np.isfinite(values)):
        raise ValueError("norms must be finite")
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    scale = CONSISTENCY * mad
    deviation = np.abs(values - median)
    with np.errstate(divide="ignore", invalid="ignore"):
        indices = np.where(deviation == 0, 0.0, deviation / scale if scale > 0 else np.inf)
    min_norm = float(values.min())
    anomaly = float(indices[int(values.argmin())])
    flagged = [int(i) for i in np.flatnonzero((values < median) & (indices > threshold))]
    return OutlierResult(median, mad, min_norm, anomaly, [float(v) for v in indices], flagged, threshold)


def label_outliers(norms: Sequence[float], labels: Sequence[int], threshold: float = 2.0) -> OutlierResult:
    """`mad_outliers` with `flagged` given as label ids (norms[i] belongs to labels[i])."""
    result = mad_outliers(norms, threshold)
    return replace(result, flagged=[int(labels[i]) for i in result.flagged])
