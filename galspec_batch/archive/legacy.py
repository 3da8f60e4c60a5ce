"""The Legacy Surveys cutout service (legacysurvey.org viewer), behind the same interface as PS1.

``/viewer/fits-cutout?ra=RA&dec=DEC&layer=ls-dr10&pixscale=0.262&size=N&bands=griz`` answers one
FITS cube of N x N pixels per band, in the order asked, its header naming them (``BANDS`` =
"griz", ``BAND0``..); pixels are in nanomaggies (AB zero point 22.5). Where the survey has no
data the service answers 404, or a cube of zeros: either puts the object in quarantine as
outside the footprint.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from galspec_batch import defaults as D
from galspec_batch.archive import checks
from galspec_batch.archive.base import CUBE, Context, Fetched, Target
from galspec_batch.archive.http import Absent, BadBody
from galspec_batch.ingest.cutouts import parse_bands

NAME = "legacy"
BANDS = ("g", "r", "i", "z")
PIXEL_SCALE = 0.262  # arcsec per pixel, the native DECam scale
MAX_SIZE = 512  # the largest cutout the viewer is known to serve (its clients cap sizes there)
FLUX_UNIT = "nanomaggy"
ZERO_POINT = 22.5
CUTOUT_PATH = "/viewer/fits-cutout"


def cutout_key(ra: float, dec: float, size: int, bands: tuple[str, ...], layer: str = D.LEGACY_LAYER) -> str:
    query = {"ra": f"{ra:.7f}", "dec": f"{dec:.7f}", "layer": layer, "pixscale": f"{PIXEL_SCALE:g}",
             "size": size, "bands": "".join(bands)}
    return f"{CUTOUT_PATH}?{urlencode(query)}"


def check_cube(path: Path, bands: tuple[str, ...], size: int) -> None:
    """A whole cube of ``size`` x ``size`` per band whose ``BANDS`` header lists ``bands`` in order;
    Absent when every pixel is 0 (no data there)."""
    data, header = checks.image(path, (len(bands), size, size) if len(bands) > 1 else (size, size))
    if "BANDS" in header:
        try:
            found = parse_bands(str(header["BANDS"]))
        except ValueError:
            raise BadBody(f"an unreadable BANDS header {str(header['BANDS'])[:40]!r}") from None
        if found != bands:
            raise BadBody(f"bands {''.join(found)} in the FITS header, asked for {''.join(bands)}")
    if not np.any(data):
        raise Absent("outside the Legacy Surveys footprint: every pixel of the cutout is 0")


def fetch_object(ctx: Context, target: Target, size: int, bands: tuple[str, ...]) -> Fetched:
    """One cube per object (skipped when already here)."""
    dest = ctx.cutout_path(NAME, size, target.object_id)
    key = cutout_key(target.ra, target.dec, size, bands)
    downloaded = ctx.fetch_file(key, dest, partial(check_cube, bands=bands, size=size))
    return Fetched(target, {CUBE: dest}, (), int(downloaded), 1 - int(downloaded))
