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


def mad_outliers(norms: Sequence[float], threshold: float = 2.0,
                 reference: Sequence[int] | None = None) -> OutlierResult:
    """anomaly index = |min − median| / (1.4826·MAD), flagging norms below the median over `threshold`.

    The ordinary median is used (mean of the two middle values for an even count). A zero MAD
    (at least half of the norms equal) makes every differing norm infinitely anomalous, which is
    what the formula says; callers see `inf`.

    `reference`: positions of the norms that estimate the median and MAD (default: all). A
    coarse-to-fine scan gives the full budget to the few smallest labels and to a random sample
    of the others; only the random sample estimates the spread without bias.
    """
    values = np.asarray(norms, dtype=np.float64)
    if values.ndim != 1 or values.size < 3:
        raise ValueError("outlier analysis needs the norms of at least 3 labels")
    if not np.all(np.isfinite(values)):
        raise ValueError("norms must be finite")
    ref = values if reference is None else values[np.asarray(reference, dtype=np.int64)]
    if ref.size < 3:
        raise ValueError("the median and MAD need at least 3 reference norms")
    median = float(np.median(ref))
    mad = float(np.median(np.abs(ref - median)))
    scale = CONSISTENCY * mad
    deviation = np.abs(values - median)
    with np.errstate(divide="ignore", invalid="ignore"):
        indices = np.where(deviation == 0, 0.0, deviation / scale if scale > 0 else np.inf)
    min_norm = float(values.min())
    anomaly = float(indices[int(values.argmin())])
    flagged = [int(i) for i in np.flatnonzero((values < median) & (indices > threshold))]
    return OutlierResult(median, mad, min_norm, anomaly, [float(v) for v in indices], flagged, threshold)


def label_outliers(norms: Sequence[float], labels: Sequence[int], threshold: float = 2.0,
                   reference: Sequence[int] | None = None) -> OutlierResult:
    """`mad_outliers` with `flagged` given as label ids (norms[i] belongs to labels[i]); `reference`
    holds label ids too."""
    if reference is not None:
        position = {int(l): i for i, l in enumerate(labels)}
        if any(int(l) not in position for l in reference):
            raise ValueError("every reference label must be one of the scanned labels")
        reference = [position[int(l)] for l in reference]
    result = mad_outliers(norms, threshold, reference)
    return replace(result, flagged=[int(labels[i]) for i in result.flagged])
