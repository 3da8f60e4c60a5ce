"""The Pan-STARRS1 image cutout service (ps1images.stsci.edu), as its documentation gives it.

1. ``/cgi-bin/ps1filenames.py?ra=RA&dec=DEC&filters=grizy&type=stack`` answers a whitespace
   table, header ``projcell subcell ra dec filter mjd type filename shortname badflag``, one row
   per stack image (one per filter) of the skycell that holds the position; outside the 3pi
   footprint (dec < -30) the table is empty.
2. ``/cgi-bin/fitscut.cgi?ra=RA&dec=DEC&size=N&format=fits&red=FILENAME`` cuts N x N pixels
   (0.25"/px) around the position from one of those images: a FITS image whose header names its
   filter (``FPA.FILTER`` = "g.00000", ...).

A band the file list lacks is a missing band (the object is ingested with that band masked); an
empty list puts the object in quarantine as outside the footprint, and the manifest keeps the
answer, so a rerun does not ask again.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from urllib.parse import urlencode

from galspec_batch.archive import checks
from galspec_batch.archive.base import Context, Fetched, Target
from galspec_batch.archive.http import Absent, BadBody

NAME = "ps1"
BANDS = ("g", "r", "i", "z", "y")
PIXEL_SCALE = 0.25  # arcsec per pixel
FILELIST_PATH = "/cgi-bin/ps1filenames.py"
CUTOUT_PATH = "/cgi-bin/fitscut.cgi"
IMAGE_TYPE = "stack"
_FILTER_KEYS = ("FPA.FILTER", "FILTER", "FILTERID")
_FILENAME = re.compile(r"/?[A-Za-z0-9_.+/-]{1,300}\.fits(\.fz)?")


def _pos(x: float) -> str:
    return f"{x:.7f}"


def filelist_key(ra: float, dec: float, bands: tuple[str, ...]) -> str:
    query = {"ra": _pos(ra), "dec": _pos(dec), "filters": "".join(bands), "type": IMAGE_TYPE}
    return f"{FILELIST_PATH}?{urlencode(query)}"


def cutout_key(ra: float, dec: float, size: int, filename: str) -> str:
    query = {"ra": _pos(ra), "dec": _pos(dec), "size": size, "format": "fits", "red": filename}
    return f"{CUTOUT_PATH}?{urlencode(query)}"


def parse_filelist(body: bytes, bands: tuple[str, ...]) -> dict[str, str]:
    """{band: image file name} from a ps1filenames.py answer (the first row of each asked band);
    BadBody when the answer is not such a table."""
    try:
        lines = [line.split() for line in body.decode("ascii").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise BadBody("a file list that is not ASCII text") from None
    if not lines or not {"filter", "filename"} <= set(lines[0]):
        first = " ".join(lines[0])[:80] if lines else "nothing"
        raise BadBody(f"not a PS1 file list (its first line: {first!r})")
    header = lines[0]
    col_filter, col_name = header.index("filter"), header.index("filename")
    files: dict[str, str] = {}
    for row in lines[1:]:
        if len(row) != len(header):
            raise BadBody(f"a file list row of {len(row)} fields under a header of {len(header)}")
        band, name = row[col_filter].lower(), row[col_name]
        if not _FILENAME.fullmatch(name):
            raise BadBody(f"a file list with an unusable file name {name[:80]!r}")
        if band in bands:
            files.setdefault(band, name)
    return files


def header_band(header) -> str | None:
    """The band a PS1 header names (``FPA.FILTER`` = "g.00000" -> "g"), or None."""
    for key in _FILTER_KEYS:
        if key in header:
            m = re.match(r"\s*([grizyw])(?![a-z])", str(header[key]), re.IGNORECASE)
            if m:
                return m.group(1).lower()
    return None


def check_cutout(path: Path, band: str, size: int) -> None:
    """A whole FITS image of ``size`` x ``size`` pixels whose header, if it names a filter, names ``band``."""
    _, header = checks.image(path, (size, size))
    found = header_band(header)
    if found is not None and found != band:
        raise BadBody(f"band {found} in the FITS header, asked for {band}")


def fetch_object(ctx: Context, target: Target, size: int, bands: tuple[str, ...]) -> Fetched:
    """The object's file list, then one cutout per band it lists (each skipped when already here)."""
    key = filelist_key(target.ra, target.dec, bands)
    ctx.check_absent(key)
    listed = ctx.manifest.get(key)
    if listed is not None and listed["kind"] == "list":
        names = listed["files"]
    else:
        try:
            names = ctx.fetcher.get_bytes(ctx.url(key), partial(parse_filelist, bands=bands))
        except Absent as exc:
            raise ctx.absent(key, str(exc)) from None
        if not names:
            raise ctx.absent(key, f"outside the PS1 footprint: no {IMAGE_TYPE} image in bands "
                                  f"{''.join(bands)} at ra={target.ra:.6f}, dec={target.dec:.6f} "
                                  "(empty file list)")
        ctx.manifest.add_list(key, names)
    files: dict[str, Path] = {}
    downloaded = 0
    for band in bands:
        if band not in names:
            continue
        dest = ctx.cutout_path(NAME, size, target.object_id, band)
        check = partial(check_cutout, band=band, size=size)
        downloaded += ctx.fetch_file(cutout_key(target.ra, target.dec, size, names[band]), dest, check)
        files[band] = dest
    missing = tuple(b for b in bands if b not in names)
    return Fetched(target, files, missing, downloaded, len(files) - downloaded)
