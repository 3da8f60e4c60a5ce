"""Point-estimate metrics shared by training, the baselines and the science report."""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826
PHOTOZ_OUTLIER = 0.15  # |z_phot - z| / (1 + z) beyond this is a catastrophic outlier


def _dz(z_pred: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    z_pred, z_true = np.asarray(z_pred, np.float64), np.asarray(z_true, np.float64)
    return (z_pred - z_true) / (1 + z_true)


def nmad(z_pred: np.ndarray, z_true: np.ndarray) -> float:
    """The normalised median absolute deviation of (z_pred - z) / (1 + z)."""
    dz = _dz(z_pred, z_true)
    return float(MAD_TO_SIGMA * np.median(np.abs(dz - np.median(dz))))


def outlier_fraction(z_pred: np.ndarray, z_true: np.ndarray, limit: float = PHOTOZ_OUTLIER) -> float:
    """The fraction of |z_pred - z| / (1 + z) > ``limit``."""
    return float(np.mean(np.abs(_dz(z_pred, z_true)) > limit))
