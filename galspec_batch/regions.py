"""Sky regions: a cone, an RA/Dec box, a list of HEALPix pixels, or a MOC file.

A region selects the store partitions (HEALPix pixels) that overlap it, and ``contains`` is the
exact per-object cut inside them. The text syntax, shared by every command that takes a region::

    cone:RA,DEC,RADIUS          degrees
    box:RA_MIN,RA_MAX,DEC_MIN,DEC_MAX
                                RA_MIN > RA_MAX wraps through RA = 0 (e.g. box:350,10,-5,5)
    pixels:ORDER:P1,P2,...      NESTED HEALPix pixels at ORDER
    moc:PATH                    a MOC FITS file (mocpy)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from galspec_batch.errors import InputError, MissingFileError, UsageError, did_you_mean
from galspec_batch.sky import SPATIAL_INDEX_ORDER, healpix_29, pixel_at_order

if TYPE_CHECKING:  # astropy, cdshealpix and mocpy load when a region is used, not at CLI start
    from mocpy import MOC

FORMS = "cone:RA,DEC,RADIUS_DEG | box:RA_MIN,RA_MAX,DEC_MIN,DEC_MAX | pixels:ORDER:P1,P2,... | moc:PATH.fits"


class Region:
    """A sky region: its text form, an exact point test and its HEALPix coverage."""

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Boolean mask of the positions (degrees) inside the region."""
        raise NotImplementedError

    def pixels(self, order: int) -> np.ndarray:
        """Sorted NESTED pixels at ``order`` that overlap the region (a few extra at most)."""
        raise NotImplementedError

    def to_moc(self, max_order: int = 10) -> MOC:
        """The region as a MOC of depth ``max_order``, covering the region."""
        raise NotImplementedError

    def __str__(self) -> str:
        raise NotImplementedError


def _positions(ra, dec) -> tuple[np.ndarray, np.ndarray]:
    return np.atleast_1d(np.asarray(ra, dtype=np.float64)), np.atleast_1d(np.asarray(dec, dtype=np.float64))


def _check_order(order: int) -> int:
    if not 0 <= int(order) <= SPATIAL_INDEX_ORDER:
        raise UsageError(f"HEALPix order must be in 0..29, got {order}")
    return int(order)


def _unique_pixels(ipix) -> np.ndarray:
    return np.unique(np.asarray(ipix, dtype=np.int64))


def _fmt(x: float) -> str:
    return f"{x:.10g}"


@dataclass(frozen=True)
class Cone(Region):
    ra: float
    dec: float
    radius: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.ra) and -90 <= self.dec <= 90 and 0 < self.radius <= 180):
            raise UsageError(
                f"cone needs finite RA, -90 <= Dec <= 90 and 0 < radius <= 180 degrees, got {self}"
            )

    def contains(self, ra, dec) -> np.ndarray:
        ra, dec = _positions(ra, dec)
        r0, d0 = np.radians(self.ra), np.radians(self.dec)
        r, d = np.radians(ra), np.radians(dec)
        # haversine: accurate for small separations, where the cut matters most
        h = np.sin((d - d0) / 2) ** 2 + np.cos(d) * np.cos(d0) * np.sin((r - r0) / 2) ** 2
        sep = 2 * np.degrees(np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))
        return sep <= self.radius

    def pixels(self, order: int) -> np.ndarray:
        import astropy.units as u
        from cdshealpix import nested

        order = _check_order(order)
        ipix, _, _ = nested.cone_search(
            self.ra * u.deg, self.dec * u.deg, self.radius * u.deg, order, flat=True
        )
        return _unique_pixels(ipix)

    def to_moc(self, max_order: int = 10) -> MOC:
        import astropy.units as u
        from mocpy import MOC

        return MOC.from_cone(
            lon=self.ra * u.deg,
            lat=self.dec * u.deg,
            radius=self.radius * u.deg,
            max_depth=_check_order(max_order),
        )

    def __str__(self) -> str:
        return f"cone:{_fmt(self.ra)},{_fmt(self.dec)},{_fmt(self.radius)}"


@dataclass(frozen=True)
class Box(Region):
    """An RA/Dec box; ``ra_min > ra_max`` means the box wraps through RA = 0."""

    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float

    def __post_init__(self) -> None:
        ok = (
            0 <= self.ra_min <= 360
            and 0 <= self.ra_max <= 360
            and self.ra_min != self.ra_max
            and -90 <= self.dec_min < self.dec_max <= 90
        )
        if not ok:
            raise UsageError(
                "box needs 0 <= RA_MIN, RA_MAX <= 360 (RA_MIN > RA_MAX wraps through 0), "
                f"RA_MIN != RA_MAX and -90 <= DEC_MIN < DEC_MAX <= 90, got {self}"
            )

    def _lon_range(self) -> tuple[float, float]:
        """RA limits in [0, 360); equal limits mean the full circle, lo > hi wraps through 0."""
        return self.ra_min % 360.0, self.ra_max % 360.0

    def contains(self, ra, dec) -> np.ndarray:
        ra, dec = _positions(ra, dec)
        ra = np.mod(ra, 360.0)
        lo, hi = self._lon_range()
        if lo < hi:
            in_ra = (ra >= lo) & (ra <= hi)
        elif lo > hi:
            in_ra = (ra >= lo) | (ra <= hi)
        else:
            in_ra = np.ones(ra.shape, dtype=bool)
        return in_ra & (dec >= self.dec_min) & (dec <= self.dec_max)

    def pixels(self, order: int) -> np.ndarray:
        import astropy.units as u
        from astropy.coordinates import Latitude, Longitude
        from cdshealpix import nested

        lo, hi = self._lon_range()
        ipix, _, _ = nested.zone_search(
            Longitude(lo * u.deg),
            Latitude(self.dec_min * u.deg),
            Longitude(hi * u.deg),
            Latitude(self.dec_max * u.deg),
            _check_order(order),
            flat=True,
        )
        return _unique_pixels(ipix)

    def to_moc(self, max_order: int = 10) -> MOC:
        from astropy.coordinates import SkyCoord
        from mocpy import MOC

        lo, hi = self._lon_range()
        corners = SkyCoord([lo, hi], [self.dec_min, self.dec_max], unit="deg")
        return MOC.from_zone(corners, max_depth=_check_order(max_order))

    def __str__(self) -> str:
        return f"box:{_fmt(self.ra_min)},{_fmt(self.ra_max)},{_fmt(self.dec_min)},{_fmt(self.dec_max)}"


@dataclass(frozen=True)
class PixelList(Region):
    """NESTED HEALPix pixels at one order."""

    order: int
    pixel_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_order(self.order)
        n_pix = 12 * 4**self.order
        bad = [p for p in self.pixel_ids if not 0 <= p < n_pix]
        if not self.pixel_ids or bad:
            raise UsageError(
                f"pixels at order {self.order} must be in 0..{n_pix - 1}, got {list(bad) or 'no pixels'}"
            )

    def contains(self, ra, dec) -> np.ndarray:
        ra, dec = _positions(ra, dec)
        return np.isin(pixel_at_order(healpix_29(ra, dec), self.order), np.asarray(self.pixel_ids))

    def pixels(self, order: int) -> np.ndarray:
        order = _check_order(order)
        mine = np.asarray(self.pixel_ids, dtype=np.int64)
        if order <= self.order:
            return _unique_pixels(mine >> (2 * (self.order - order)))
        shift = 2 * (order - self.order)
        children = (mine[:, None] << shift) + np.arange(1 << shift, dtype=np.int64)[None, :]
        return _unique_pixels(children.ravel())

    def to_moc(self, max_order: int = 10) -> MOC:
        from mocpy import MOC

        ipix = np.asarray(self.pixel_ids, dtype=np.uint64)
        moc = MOC.from_healpix_cells(ipix, np.full(ipix.shape, self.order, dtype=np.uint8), self.order)
        return moc.degrade_to_order(max_order) if max_order < self.order else moc

    def __str__(self) -> str:
        return f"pixels:{self.order}:{','.join(str(p) for p in self.pixel_ids)}"


@dataclass(frozen=True, eq=False)
class MocRegion(Region):
    """A MOC read from a FITS file; its cells are the exact region."""

    path: Path
    moc: MOC

    @classmethod
    def from_file(cls, path: str | Path) -> MocRegion:
        from mocpy import MOC

        path = Path(path).resolve()  # the text form must hold wherever it is read again
        if not path.is_file():
            raise MissingFileError(f"MOC file {path} does not exist")
        try:
            moc = MOC.from_fits(path)
        except Exception as exc:  # mocpy raises assorted errors for a non-MOC file
            raise InputError(f"{path} is not a MOC FITS file ({type(exc).__name__}: {exc})") from None
        if moc.empty():
            raise InputError(f"MOC file {path} is empty")
        return cls(path, moc)

    def contains(self, ra, dec) -> np.ndarray:
        import astropy.units as u

        ra, dec = _positions(ra, dec)
        return np.asarray(self.moc.contains_lonlat(ra * u.deg, dec * u.deg), dtype=bool)

    def pixels(self, order: int) -> np.ndarray:
        order = _check_order(order)
        shift = 2 * (SPATIAL_INDEX_ORDER - order)
        ranges = np.asarray(self.moc.to_depth29_ranges, dtype=np.int64)
        found = [np.arange(lo >> shift, ((hi - 1) >> shift) + 1, dtype=np.int64) for lo, hi in ranges]
        return _unique_pixels(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    def to_moc(self, max_order: int = 10) -> MOC:
        return self.moc.degrade_to_order(max_order) if max_order < self.moc.max_order else self.moc

    def __str__(self) -> str:
        return f"moc:{self.path}"


def _numbers(text: str, kind: str, count: int | None, cast=float) -> list:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [cast(p) for p in parts]
    except ValueError:
        raise UsageError(f"bad {kind} region {text!r}: expected numbers; accepted forms: {FORMS}") from None
    if count is not None and len(values) != count:
        raise UsageError(
            f"bad {kind} region {text!r}: expected {count} comma-separated numbers, got "
            f"{len(values)}; accepted forms: {FORMS}"
        )
    return values


def parse_region(text: str | Region) -> Region:
    """A region from its text form (see the module docstring); raises InputError naming the forms."""
    if isinstance(text, Region):
        return text
    kind, sep, body = str(text).strip().partition(":")
    kind = kind.strip().lower()
    if not sep or not body.strip():
        raise UsageError(f"bad region {text!r}; accepted forms: {FORMS}")
    if kind == "cone":
        return Cone(*_numbers(body, "cone", 3))
    if kind == "box":
        return Box(*_numbers(body, "box", 4))
    if kind in ("pixels", "pixel", "healpix"):
        order, sep, pix = body.partition(":")
        if not sep:
            raise UsageError(
                f"bad pixels region {text!r}: expected pixels:ORDER:P1,P2,...; accepted forms: {FORMS}"
            )
        (order_value,) = _numbers(order, "pixels", 1, int)
        return PixelList(order_value, tuple(sorted(set(_numbers(pix, "pixels", None, int)))))
    if kind == "moc":
        return MocRegion.from_file(body.strip())
    raise UsageError(f"unknown region kind {kind!r} in {text!r}; accepted forms: {FORMS}")


def parse_partitions(text: str | list[int]) -> list[int]:
    """Partition pixels from ``"12,13"`` or ``"Norder=6/Npix=12,Norder=6/Npix=13"``."""
    if not isinstance(text, str):
        return sorted({int(p) for p in text})
    pixels = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        value = part.rsplit("Npix=", 1)[-1].removesuffix(".parquet")
        try:
            pixels.add(int(value))
        except ValueError:
            raise UsageError(
                f"bad partition name {part!r}: expected a pixel number (12) or Norder=K/Npix=P"
            ) from None
    if not pixels:
        raise UsageError(f"no partitions given in {text!r}")
    return sorted(pixels)


def select_partitions(store, region: Region | str | None = None, partitions=None) -> list[tuple]:
    """The store partitions to process, with their object count inside the region.

    Returns ``[(Partition, n_in_region), ...]`` sorted by pixel, only partitions holding at least
    one object of the region. Raises InputError for an unknown partition or a region without data.
    """
    by_pixel = {p.pixel: p for p in store.partitions()}
    if partitions is not None:
        wanted = parse_partitions(partitions)
        unknown = [p for p in wanted if p not in by_pixel]
        if unknown:
            names = [str(p) for p in by_pixel]
            raise UsageError(
                f"unknown partition {unknown[0]} in store {store.path} (order {store.partition_order}; "
                f"it has {len(by_pixel)} partitions: {', '.join(names[:8])}"
                f"{', ...' if len(names) > 8 else ''}).{did_you_mean(str(unknown[0]), names)}"
            )
        chosen = [by_pixel[p] for p in wanted]
    else:
        chosen = list(by_pixel.values())
    if region is None:
        out = [(p, p.n) for p in chosen]
    else:
        region = parse_region(region)
        overlap = set(region.pixels(store.partition_order).tolist())
        out = []
        for p in chosen:
            if p.pixel not in overlap:
                continue
            rows = np.concatenate([np.arange(a, b) for a, b in p.ranges])
            n = int(region.contains(store.ra[rows], store.dec[rows]).sum())
            if n:
                out.append((p, n))
    if not out:
        what = f"region {region}" if region is not None else "the selection"
        raise InputError(
            f"{what} overlaps no data in store {store.path} ({store.n_objects} objects in "
            f"{len(by_pixel)} partitions at order {store.partition_order})"
        )
    return out
