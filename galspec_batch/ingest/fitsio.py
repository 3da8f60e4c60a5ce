"""Safe FITS reading shared by the ingest readers: a corrupt, truncated or non-FITS file becomes a
one-line FormatError that names it, instead of an astropy traceback or a silently short array."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from galspec_batch.errors import FormatError, MissingFileError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fz")


def fits_stem(path: Path) -> str:
    """The file name without its FITS suffix (``a.g.fits.fz`` -> ``a.g``)."""
    name = path.name
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_fits_name(path: Path) -> bool:
    return path.name.lower().endswith(FITS_SUFFIXES)


def read_fits(path: str | Path) -> fits.HDUList:
    """Open a FITS file fully into memory; every HDU's data is read now, so truncation shows here."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
            for hdu in hdul:
                _ = hdu.data
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError... for bad bytes
        truncated = _truncation(caught)
        what = (
            f"truncated FITS file ({truncated})"
            if truncated
            else f"not a readable FITS file ({_first_line(exc)})"
        )
        raise FormatError(f"{path}: {what}") from exc
    truncated = _truncation(caught)
    if truncated:
        hdul.close()
        raise FormatError(f"{path}: truncated FITS file ({truncated})")
    return hdul


def _truncation(caught: list) -> str | None:
    found = [_first_line(w.message) for w in caught if "truncated" in str(w.message)]
    return found[0] if found else None


def first_image_hdu(hdul: fits.HDUList, path: Path) -> fits.ImageHDU | fits.PrimaryHDU:
    """The first HDU holding a 2-d or 3-d image (the primary, or a compressed image extension)."""
    for hdu in hdul:
        if hdu.is_image and hdu.data is not None and np.ndim(hdu.data) in (2, 3):
            return hdu
    shapes = [None if h.data is None else np.shape(h.data) for h in hdul]
    raise FormatError(f"{path}: no 2-d or 3-d image in any HDU (HDU shapes: {shapes})")


def _first_line(message: object) -> str:
    text = str(message).strip()
    return text.splitlines()[0] if text else type(message).__name__
