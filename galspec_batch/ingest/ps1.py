"""Pan-STARRS (PS1) pixel scaling and zero points, for the cutout ingest.

Asinh scaling. PS1 stack images written by the IPP are asinh-compressed,
``C = a * asinh((L - BOFFSET) / (2 * BSOFTEN))`` with ``a = 2.5 log10(e) = 1.0857362``, and
linearised by ``L = BOFFSET + BSOFTEN * 2 * sinh(C / a)`` (IPP wiki, "asinh_compression",
http://svn.pan-starrs.ifa.hawaii.edu/trac/ipp/wiki/asinh_compression). The MAST PS1 pages say the
scaling applies to full skycell stack images, not to the archive's FITS cutouts (already linear)
nor to warps, and that the presence of ``BSOFTEN`` and ``BOFFSET`` tells whether it is needed
(outerspace.stsci.edu, pageId 120559173). So a 2-d image with both keywords is linearised,
whatever else its header says; one without them is left as it is.

Zero points. Stack pixels are scaled to an AB zero point of ``25 + 2.5 log10(exposure time)``,
the exposure time in the FITS header (outerspace.stsci.edu, pageId 10258063). A PS1 image with
``EXPTIME`` gets that zero point, with the header's ``FPA.ZP`` in place of 25 when it has one (as
third-party PS1 readers do; the pages cited do not describe ``FPA.ZP``).

Refused, with a one-line reason: a PS1-looking image (``TELESCOP``/``INSTRUME`` naming PS1 or
GPC1, ``FPA.*`` keywords, a skycell file name, or either scaling keyword) with only one of
``BSOFTEN``/``BOFFSET`` or with values that cannot undo the scaling, an ``EXPTIME`` that is not
a positive number, and a 3-d cube with the scaling keywords (each stack image has its own pair).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galspec_batch import defaults as D
from galspec_batch.errors import InputError
from galspec_batch.store.format import NANOMAGGY_ZERO_POINT

ASINH_A = 2.5 / math.log(10.0)  # 2.5 log10(e) = 1.0857362, the IPP's alpha
_SCALING_KEYS = ("BSOFTEN", "BOFFSET")
_SKYCELL_NAME = re.compile(r"skycell\.\d+\.\d+", re.IGNORECASE)


def looks_ps1(header, path: Path) -> bool:
    """Whether the header or file name says Pan-STARRS (see the module docstring)."""
    origin = f"{header.get('TELESCOP', '')} {header.get('INSTRUME', '')}".upper()
    return (
        "PS1" in origin
        or "GPC1" in origin
        or any(str(k).upper().startswith("FPA.") for k in header)
        or any(k in header for k in _SCALING_KEYS)
        or bool(_SKYCELL_NAME.search(path.name))
    )


def _number(header, key: str) -> float | None:
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def linearise(data: np.ndarray, header, path: Path) -> np.ndarray:
    """``data`` as linear flux: unchanged without BSOFTEN/BOFFSET, else the PS1 sinh inverse."""
    present = [k for k in _SCALING_KEYS if k in header]
    if not present:
        return data
    if len(present) == 1:
        missing = next(k for k in _SCALING_KEYS if k not in header)
        raise InputError(
            f"{path}: asinh-scaled Pan-STARRS pixels with {present[0]} but no {missing}: "
            "cannot turn them back into linear flux"
        )
    soften, offset = _number(header, "BSOFTEN"), _number(header, "BOFFSET")
    if soften is None or soften <= 0 or offset is None:
        raise InputError(
            f"{path}: BSOFTEN = {header['BSOFTEN']!r}, BOFFSET = {header['BOFFSET']!r} cannot undo the "
            "asinh scaling (needs a positive BSOFTEN and a finite BOFFSET)"
        )
    if data.ndim != 2:
        raise InputError(
            f"{path}: a {data.shape[0]}-plane cube with one BSOFTEN/BOFFSET pair; PS1 asinh-scales "
            "each stack image with its own, so linearise the planes before stacking them"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        linear = offset + 2.0 * soften * np.sinh(data.astype(np.float64) / ASINH_A)
    return linear.astype(np.float32)


def header_zero_point(header, path: Path) -> float | None:
    """AB zero point of one pixel unit of a PS1 image with EXPTIME, else None."""
    if "EXPTIME" not in header or not looks_ps1(header, path):
        return None
    exptime = _number(header, "EXPTIME")
    if exptime is None or exptime <= 0:
        raise InputError(
            f"{path}: EXPTIME = {header['EXPTIME']!r} gives no zero point (expected seconds > 0)"
        )
    base = _number(header, "FPA.ZP") if "FPA.ZP" in header else None
    return (D.PS1_ZERO_POINT if base is None else base) + 2.5 * math.log10(exptime)


def calibrate(data: np.ndarray, header, path: Path) -> tuple[np.ndarray, float | None]:
    """Linear pixels and their header zero point (None for a cube or a non-PS1 image)."""
    data = linearise(data, header, path)
    return data, header_zero_point(header, path) if data.ndim == 2 else None


@dataclass
class ZeroPoints:
    """The store's zero point per band and how each object's pixels are put on it.

    With ``given`` (``--zero-point``) every band of the store is at ``given``: a plane with a
    header zero point is multiplied by ``10**(0.4 * (given - zp))``, one without is taken to be at
    ``given`` already. Without it the first ingested object decides: header zero points put the
    store at ``D.PS1_ZERO_POINT`` in every band (PS1 pixels per second of EXPTIME) and later planes
    are rescaled onto it; without them the store's zero point is 22.5 for nanomaggies, else
    unknown. A plane that cannot be put on the store's scale is an error for its object.
    """

    bands: tuple[str, ...]
    given: float | None = None
    store: dict[str, float | None] | None = None
    from_headers: bool = False

    def _decide(self, found: dict[str, float], unit: str) -> tuple[dict[str, float | None], bool]:
        if self.given is not None:
            return dict.fromkeys(self.bands, self.given), False
        if found:
            return dict.fromkeys(self.bands, D.PS1_ZERO_POINT), True
        unknown = NANOMAGGY_ZERO_POINT if unit == "nanomaggy" else None
        return dict.fromkeys(self.bands, unknown), False

    def apply(
        self, image: np.ndarray, mask: np.ndarray, found: dict[str, float], unit: str, label: str
    ) -> None:
        """Rescale ``image`` planes with a header zero point (``found``) onto the store's, in place."""
        store, from_headers = (self.store, self.from_headers) if self.store else self._decide(found, unit)
        for k, band in enumerate(self.bands):
            if not mask[k]:
                continue
            if band not in found and from_headers:
                raise InputError(
                    f"{label}: band {band} has no zero point in its header (PS1 EXPTIME) but the store's "
                    f"pixels are at AB {store[band]} from PS1 headers; pass --zero-point if they are on "
                    "one known scale"
                )
            if band in found and store[band] is None:
                raise InputError(
                    f"{label}: band {band} is at AB zero point {found[band]:.3f} (header EXPTIME) but the "
                    "store's zero point is unknown (its first object had none); pass --zero-point"
                )
        for k, band in enumerate(self.bands):
            if mask[k] and band in found:
                image[k] *= np.float32(10.0 ** (0.4 * (store[band] - found[band])))
        self.store, self.from_headers = store, from_headers
