"""Checks of a downloaded FITS file on arrival, before it is kept: a FITS file at all (not an HTML
error page served with status 200), whole (astropy reads every HDU to its end, through the
ingest code's own reader), and the image that was asked for. A failed check raises BadBody, and
the request is retried."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from galspec_batch.archive.http import BadBody
from galspec_batch.errors import FormatError
from galspec_batch.ingest.fitsio import first_image_hdu, read_fits

FITS_START = b"SIMPLE  ="
_TITLE = re.compile(rb"<title[^>]*>(.{0,200}?)</title>", re.IGNORECASE | re.DOTALL)


def sniff(path: Path) -> None:
    """BadBody unless the file begins as FITS does; an HTML page is named as one, with its title."""
    with open(path, "rb") as fh:
        head = fh.read(2880)
    if head.startswith(FITS_START):
        return
    if b"<html" in head.lower() or head.lstrip().startswith(b"<"):
        m = _TITLE.search(head)
        title = re.sub(r"[^\x20-\x7e]+", " ", m.group(1).decode("latin-1")).strip() if m else ""
        raise BadBody("an HTML page, not FITS" + (f" ({title[:80]})" if title else ""))
    raise BadBody(f"not a FITS file (it begins {head[:16]!r})")


def read_checked(path: Path) -> fits.HDUList:
    """The whole file, read by the ingest reader; BadBody when it is not FITS or is truncated."""
    sniff(path)
    try:
        return read_fits(path)
    except FormatError as exc:
        raise BadBody(str(exc).removeprefix(f"{path}: ")) from None


def image(path: Path) -> tuple[np.ndarray, fits.Header]:
    """The first 2-d or 3-d image of a checked file, and its header."""
    with contextlib.closing(read_checked(path)) as hdul:
        try:
            hdu = first_image_hdu(hdul, path)
        except FormatError as exc:
            raise BadBody(str(exc).removeprefix(f"{path}: ")) from None
        return np.asarray(hdu.data), hdu.header.copy()


def check_shape(data: np.ndarray, expected: tuple[int, ...]) -> None:
    if data.shape != expected:
        raise BadBody(f"image of shape {data.shape}, asked for {expected}")


def hdu_names(path: Path) -> list[str]:
    with contextlib.closing(read_checked(path)) as hdul:
        return [h.name for h in hdul]
