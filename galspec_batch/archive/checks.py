"""Checks of a downloaded FITS file on arrival, before it is kept: a FITS file at all (not an HTML
error page served with status 200), no more data than was asked for (read from the headers alone,
before any data: a small tile-compressed answer can declare gigabytes), whole (astropy reads every
HDU to its end, through the ingest code's own reader), and the image that was asked for. A failed
check raises BadBody, and the request is retried."""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from galspec_batch.archive.http import BadBody
from galspec_batch.errors import FormatError
from galspec_batch.ingest.fitsio import first_image_hdu, read_fits

FITS_START = b"SIMPLE  ="
_TITLE = re.compile(rb"<title[^>]*>(.{0,200}?)</title>", re.IGNORECASE | re.DOTALL)
# an image's data may take up to 8 bytes a pixel (BITPIX -64), twice that with what else its file
# holds, and 1 MiB more for small extra HDUs (a mask, a table)
PIXEL_BYTES, MARGIN, SLACK = 8, 2, 1 << 20


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


def declared_bytes(header: fits.Header) -> int:
    """The bytes an HDU's data takes once read: decompressed for a tile-compressed image (ZNAXISn,
    ZBITPIX), else NAXISn, BITPIX, PCOUNT and GCOUNT as the FITS standard has them."""
    try:
        if header.get("ZIMAGE"):
            axes = [int(header[f"ZNAXIS{k}"]) for k in range(1, int(header["ZNAXIS"]) + 1)]
            return abs(int(header["ZBITPIX"])) // 8 * math.prod(axes)
        axes = [int(header[f"NAXIS{k}"]) for k in range(1, int(header.get("NAXIS", 0)) + 1)]
        if not axes:
            return 0
        if axes[0] == 0 and len(axes) > 1:  # random groups: NAXIS1 = 0 stands for no axis
            axes = axes[1:]
        groups, extra = int(header.get("GCOUNT", 1)), int(header.get("PCOUNT", 0))
        return abs(int(header["BITPIX"])) // 8 * groups * (extra + math.prod(axes))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadBody(f"an HDU header without a usable size ({exc})") from None


def check_declared(path: Path, max_bytes: int) -> None:
    """BadBody when the file's HDUs declare more than ``max_bytes`` of data, read from their
    headers without touching any data (compressed HDUs are kept as the tables they are)."""
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True, disable_image_compression=True) as hdul:
            total = sum(declared_bytes(hdu.header) for hdu in hdul)
    except BadBody:
        raise
    except Exception:  # not FITS enough to tell: the full read below says what is wrong
        return
    if total > max_bytes:
        raise BadBody(f"its HDUs declare {total} bytes of data, more than the {max_bytes} expected "
                      "of what was asked for (a compressed answer is not decompressed past this)")


def read_checked(path: Path, max_bytes: int) -> fits.HDUList:
    """The whole file, read by the ingest reader once its headers declare at most ``max_bytes`` of
    data; BadBody when it is not FITS, declares more, or is truncated."""
    sniff(path)
    check_declared(path, max_bytes)
    try:
        return read_fits(path)
    except FormatError as exc:
        raise BadBody(str(exc).removeprefix(f"{path}: ")) from None


def image(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, fits.Header]:
    """The first 2-d or 3-d image of a checked file, and its header; BadBody unless it has ``shape``
    (the file may declare at most MARGIN times that many pixels of PIXEL_BYTES, plus SLACK)."""
    limit = MARGIN * PIXEL_BYTES * math.prod(shape) + SLACK
    with contextlib.closing(read_checked(path, limit)) as hdul:
        try:
            hdu = first_image_hdu(hdul, path)
        except FormatError as exc:
            raise BadBody(str(exc).removeprefix(f"{path}: ")) from None
        data = np.asarray(hdu.data)
        if data.shape != shape:
            raise BadBody(f"image of shape {data.shape}, asked for {shape}")
        return data, hdu.header.copy()


def hdu_names(path: Path, max_bytes: int) -> list[str]:
    """The HDU names of a checked file that declares at most ``max_bytes`` of data."""
    with contextlib.closing(read_checked(path, max_bytes)) as hdul:
        return [h.name for h in hdul]
