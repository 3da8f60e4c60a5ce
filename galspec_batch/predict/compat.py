"""Does a store fit a checkpoint? Bands, image size, pixel scale, survey and flux scale must all be
what the network was trained on; a flux scale that differs is refused, or rescaled on request
where both zero points are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galspec_batch.checkpoint import CheckpointConfig
from galspec_batch.errors import InputError
from galspec_batch.store import CutoutStore


def check_compatible(store: CutoutStore, config: CheckpointConfig, checkpoint: str | Path, *,
                     rescale_flux: bool = False, allow_survey_mismatch: bool = False
                     ) -> tuple[float, ...] | None:
    """Refuse a store that does not fit the checkpoint (InputError, one line naming both); return
    the per-band factors that put the store's pixels on the checkpoint's flux scale when
    ``rescale_flux`` asks for them (None when no rescaling is needed)."""
    what = f"checkpoint {checkpoint} was trained on"
    if config.bands != store.bands:
        raise InputError(f"{what} bands {''.join(config.bands)} but store {store.path} has "
                         f"{''.join(store.bands)}")
    if config.image_size != store.image_shape:
        raise InputError(f"{what} {config.image_size} images but store {store.path} holds "
                         f"{store.image_shape}")
    scale = config.pixel_scale
    if scale is not None and abs(scale - store.pixel_scale) > 1e-3 * scale:
        raise InputError(f"{what} {scale}\"/px but store {store.path} has {store.pixel_scale}\"/px")
    if config.survey is not None and config.survey != store.survey and not allow_survey_mismatch:
        raise InputError(f"{what} survey {config.survey!r} but store {store.path} is {store.survey!r}; pass "
                         "--allow-survey-mismatch if its filters and depth are the same")
    return _flux_factors(store, config, what, rescale_flux)


def _flux_factors(store: CutoutStore, config: CheckpointConfig, what: str,
                  rescale: bool) -> tuple[float, ...] | None:
    if config.zero_points is None and config.flux_unit is None:
        return None  # a checkpoint that records no flux scale (made by hand): nothing to compare
    mine = config.zero_points
    theirs = tuple(store.attrs.zero_points[b] for b in store.bands)
    unit_ok = config.flux_unit == store.attrs.flux_unit
    zp_ok = mine is not None and None not in theirs and np.allclose(mine, theirs, rtol=0, atol=1e-6)
    if unit_ok and (zp_ok or (mine is None and None in theirs)):
        return None
    described = (f"{what} {config.flux_unit} at AB zero point {_zps(mine)} but store {store.path} holds "
                 f"{store.attrs.flux_unit} at {_zps(theirs)}")
    if mine is None or None in theirs:
        raise InputError(f"{described}: with a zero point unknown the pixels cannot be put on one scale; "
                         "ingest with --zero-point")
    if not rescale:
        raise InputError(f"{described}; pass --rescale-flux to multiply the pixels by 10**(0.4 * (zp_model - "
                         "zp_store)) per band")
    return tuple(float(10 ** (0.4 * (a - b))) for a, b in zip(mine, theirs, strict=True))


def _zps(zps) -> str:
    if zps is None or None in zps:
        return "unknown"
    return str(zps[0]) if len(set(zps)) == 1 else "/".join(str(z) for z in zps)
