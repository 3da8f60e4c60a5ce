"""Scores shared by the comparisons: RMSE, robust scatter (NMAD), the photo-z metrics and
bootstrap intervals by resampling objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from galspec_batch.errors import InputError

MAD_TO_SIGMA = 1.4826  # the MAD of a Gaussian times this is its sigma
OUTLIER_THRESHOLD = 0.15  # |z_pred - z| / (1 + z) beyond this is a photo-z outlier
BOOTSTRAP_LEVEL = 0.683  # central share of the bootstrap distribution: 1-sigma error bars
N_BOOT = 1000


def rmse(pred: np.ndarray, true: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Root mean square of ``pred - true`` (over ``axis``; all of it when None)."""
    diff = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    out = np.sqrt(np.mean(diff**2, axis=axis))
    return float(out) if np.ndim(out) == 0 else out


def nmad(values: np.ndarray) -> float:
    """Normalised median absolute deviation: 1.4826 x median |x - median(x)| (NaN ignored)."""
    x = np.asarray(values, np.float64)
    return float(MAD_TO_SIGMA * np.nanmedian(np.abs(x - np.nanmedian(x))))


def redshift_error(z_pred: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """(z_pred - z) / (1 + z), the usual photo-z error."""
    z_pred, z_true = np.asarray(z_pred, np.float64), np.asarray(z_true, np.float64)
    if not (np.isfinite(z_pred).all() and np.isfinite(z_true).all()):
        bad_pred, bad_true = int((~np.isfinite(z_pred)).sum()), int((~np.isfinite(z_true)).sum())
        raise InputError(f"{bad_pred} predicted and {bad_true} true redshifts are not finite; "
                         "leave those objects out")
    if z_pred.shape != z_true.shape:
        raise InputError(f"z_pred and z have shapes {z_pred.shape} and {z_true.shape}; expected the same")
    if (z_true <= -1).any():
        raise InputError(f"true redshifts must be > -1, got minimum {z_true.min():g}")
    return (z_pred - z_true) / (1 + z_true)


def outlier_fraction(dz: np.ndarray, threshold: float = OUTLIER_THRESHOLD) -> float:
    """Share of ``dz = (z_pred - z) / (1 + z)`` with |dz| > ``threshold``."""
    dz = np.asarray(dz, np.float64)
    return float(np.mean(np.abs(dz) > threshold)) if dz.size else float("nan")


@dataclass(frozen=True)
class PhotoZMetrics:
    """Photo-z scores of ``dz = (z_pred - z) / (1 + z)``: its NMAD, the outlier fraction
    (|dz| > 0.15) and the bias (median dz, robust to the outliers)."""

    nmad: float
    outlier_fraction: float
    bias: float
    n: int


def photoz_metrics(z_pred: np.ndarray, z_true: np.ndarray) -> PhotoZMetrics:
    """NMAD, outlier fraction and bias of predicted redshifts against true ones."""
    dz = redshift_error(z_pred, z_true)
    if dz.size == 0:
        raise InputError("no redshifts to score")
    return PhotoZMetrics(nmad(dz), outlier_fraction(dz), float(np.median(dz)), int(dz.size))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | np.ndarray],
    n: int,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = BOOTSTRAP_LEVEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``statistic(idx)``, where ``idx`` resamples the ``n``
    objects 0..n-1 with replacement; the statistic may be a scalar or an array (one interval each).

    Returns (low, high) holding the central ``level`` of the ``n_boot`` replicates.
    """
    if n < 1 or n_boot < 2:
        raise InputError(f"bootstrap needs n >= 1 objects and n_boot >= 2 replicates, got {n} and {n_boot}")
    if not 0 < level < 1:
        raise InputError(f"bootstrap level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    reps = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)], np.float64)
    tail = 50 * (1 - level)
    low, high = np.percentile(reps, [tail, 100 - tail], axis=0)
    return low, high
