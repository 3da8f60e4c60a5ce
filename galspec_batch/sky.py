"""Sky indexing in the hats convention: ``_healpix_29`` is the NESTED HEALPix index at order 29;
the pixel of an object at a coarser order k is ``_healpix_29 >> 2 * (29 - k)``."""

from __future__ import annotations

import numpy as np

SPATIAL_INDEX_ORDER = 29
SPATIAL_INDEX_COLUMN = "_healpix_29"


def healpix_29(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """NESTED order-29 HEALPix index (int64) of positions in degrees."""
    import astropy.units as u  # loaded on first use, not at CLI start
    from cdshealpix import nested

    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    if ra.size == 0:
        return np.zeros(0, dtype=np.int64)
    ipix = nested.lonlat_to_healpix(ra * u.deg, dec * u.deg, SPATIAL_INDEX_ORDER)
    return np.asarray(ipix, dtype=np.int64)


def pixel_at_order(hp29: np.ndarray, order: int) -> np.ndarray:
    """The NESTED pixel at ``order`` containing each order-29 index."""
    if not 0 <= order <= SPATIAL_INDEX_ORDER:
        raise ValueError(f"HEALPix order must be in 0..29, got {order}")
    return np.asarray(hp29, dtype=np.int64) >> (2 * (SPATIAL_INDEX_ORDER - order))
