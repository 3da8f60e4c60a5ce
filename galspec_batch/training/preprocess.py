"""Image preprocessing statistics, fitted on the training split.

Per band: the asinh softening is the robust sky-noise level (1.4826 x the median absolute deviation
of the pixels, which the sky dominates), so faint structure stays linear and bright cores are
compressed; the mean and std are those of the stretched pixels. The transform itself lives in
:func:`galspec_batch.checkpoint.normalize_images` so that every checkpoint carries it.
"""

from __future__ import annotations

import numpy as np
import torch

from galspec_batch.errors import InputError
from galspec_batch.metrics import MAD_TO_SIGMA
from galspec_batch.models import normalize_images

MAX_SAMPLE_OBJECTS = 2000


def robust_sky_sigma(images: np.ndarray) -> np.ndarray:
    """Per-band noise estimate of [N, B, H, W] flux images (NaN ignored): 1.4826 x MAD."""
    x = np.moveaxis(np.asarray(images, dtype=np.float32), 1, 0).reshape(images.shape[1], -1)
    med = np.nanmedian(x, axis=1, keepdims=True)
    sigma = MAD_TO_SIGMA * np.nanmedian(np.abs(x - med), axis=1)
    fallback = np.nanstd(x, axis=1)
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, fallback)
    bad = ~(np.isfinite(sigma) & (sigma > 0))
    if bad.any():
        raise InputError(
            f"bands {np.flatnonzero(bad).tolist()} of the training images are empty or constant; "
            "cannot set their asinh softening"
        )
    return sigma.astype(np.float32)


def fit_preprocess(images: np.ndarray, seed: int = 0) -> dict[str, list[float]]:
    """Softening, mean and std per band from training images [N, B, H, W] (a sample of at most
    2000 objects); the result is the ``preprocess`` entry of a checkpoint config."""
    n = images.shape[0]
    if n == 0:
        raise InputError("no training images to fit the preprocessing on")
    if n > MAX_SAMPLE_OBJECTS:
        pick = np.sort(np.random.default_rng(seed).choice(n, MAX_SAMPLE_OBJECTS, replace=False))
        images = images[pick]
    images = np.asarray(images, dtype=np.float32)
    softening = robust_sky_sigma(images)
    nb = images.shape[1]
    stretched = normalize_images(
        torch.from_numpy(images), torch.from_numpy(softening), torch.zeros(nb), torch.ones(nb)
    ).double()
    mean = stretched.mean(dim=(0, 2, 3))
    std = stretched.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return {
        "softening": softening.astype(float).tolist(),
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
