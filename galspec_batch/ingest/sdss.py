"""SDSS ``spec-PLATE-MJD-FIBER.fits`` spectra to the rest-frame spectra table.

Reads HDU1 COADD (``flux``, ``loglam``, ``ivar``, ``and_mask``) and HDU2, the redshift row: named
SPECOBJ in SDSS-I/II files and SPALL in BOSS/eBOSS ones (a copy of the spAll row; data.sdss.org
datamodel ``BOSS_SPECTRO_REDUX/RUN2D/spectra/PLATE4/spec.html``). Columns used: ``Z``,
``ZWARNING``, ``CLASS``, ``PLUG_RA``, ``PLUG_DEC``, ``PLATE``, ``MJD``, ``FIBERID`` (``FIBER`` as
spAll-lite names it) and the ids; ``SPECOBJID`` may be a string (SDSS-I/II), a signed or an
unsigned 64-bit integer (the plate fills bits 50-63, so plates from 8192 on, eBOSS's, pass int64).
The spectrum is shifted to the rest frame with ``Z``, resampled onto the 1000-bin grid and
normalised (``galspec_batch.spectra``). Pixels with ``and_mask != 0`` or ``ivar == 0`` are masked.

Refused, in physical terms: a CLASS outside ``classes`` (``CLASS=STAR``), no or a non-positive
redshift, ZWARNING bits (decoded by name: ``ZWARNING=4 (SMALL_DELTA_CHI2: ...)``) unless allowed,
and too little of the rest-frame grid covered, saying whether the redshift moved the grid out of
the observed range or masked pixels left it empty.

Object ids: ``SPECOBJID`` by default (unique per spectrum; falls back to the plate-mjd-fiber id
when absent or beyond int64), ``BESTOBJID`` (the photometric object, so repeat spectra of a galaxy
share it) or ``plate-mjd-fiber``: ``plate * 10**9 + mjd * 10**4 + fiber`` (266, 51602, 166 ->
266516020166).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galspec_batch import defaults as D
from galspec_batch.columns import NORM
from galspec_batch.errors import FormatError, GalspecError, InputError
from galspec_batch.ingest.fitsio import read_fits
from galspec_batch.ingest.quarantine import IngestReport, Quarantined, check_output_free, finish
from galspec_batch.progress import track
from galspec_batch.spectra import (
    WAVE,
    WAVE_EDGES,
    RestSpectrum,
    edges_from_centers,
    resample,
    rest_frame_spectrum,
)
from galspec_batch.spectra_table import spectra_to_table, write_spectra_table

ID_SOURCES = ("specobjid", "bestobjid", "plate-mjd-fiber")
COADD = "COADD"
REDSHIFT_HDUS = ("SPECOBJ", "SPALL")  # SDSS-I/II, BOSS/eBOSS
_INT64_MAX = np.iinfo(np.int64).max
# ZWARNING bits (sdss.org DR10 "bitmask_zwarning"; NODATA, bit 9, from the DR16 flag list)
ZWARNING_BITS = {
    0: ("SKY", "a sky fibre, no object"),
    1: ("LITTLE_COVERAGE", "too little wavelength coverage for a redshift"),
    2: ("SMALL_DELTA_CHI2", "the best fit's reduced chi2 is within 0.01 of the next best's: an ambiguous z"),
    3: ("NEGATIVE_MODEL", "the best-fit model spectrum is negative"),
    4: ("MANY_OUTLIERS", "over 5% of the pixels lie more than 5 sigma off the best fit"),
    5: ("Z_FITLIMIT", "the chi2 minimum is at the edge of the redshift range searched"),
    6: ("NEGATIVE_EMISSION", "a quasar line fits as negative emission"),
    7: ("UNPLUGGED", "the fibre was unplugged: no spectrum"),
    8: ("BAD_TARGET", "catastrophically bad targeting data (e.g. bad astrometry)"),
    9: ("NODATA", "no data for this fibre (ivar = 0 everywhere)"),
}
_CLASS_WORDS = {"STAR": "a star", "QSO": "a quasar, its light dominated by the nucleus"}


@dataclass(frozen=True)
class SdssSpectrum:
    """One SDSS spectrum as read from its file (observed frame, SDSS units); ``spec_class`` is the
    pipeline's CLASS ("" when the file has none)."""

    path: Path
    object_id: int
    ra: float
    dec: float
    z: float
    zwarning: int
    plate: int
    mjd: int
    fiber: int
    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    spec_class: str = ""


def plate_mjd_fiber_id(plate: int, mjd: int, fiber: int) -> int:
    """``plate * 10**9 + mjd * 10**4 + fiber``: the decimal digits read plate|mjd|fiber."""
    return int(plate) * 10**9 + int(mjd) * 10**4 + int(fiber)


def zwarning_text(zwarning: int) -> str:
    """The set ZWARNING bits by name and meaning, e.g. ``SMALL_DELTA_CHI2: the best fit's ...``."""
    bits = [b for b in range(max(int(zwarning).bit_length(), 1)) if zwarning >> b & 1]
    return "; ".join(
        "{}: {}".format(*ZWARNING_BITS[b]) if b in ZWARNING_BITS else f"bit {b}: not a documented flag"
        for b in bits
    )


def read_sdss_spectrum(path: str | Path, id_from: str = "specobjid") -> SdssSpectrum:
    """Read one ``spec-*.fits`` (SDSS-I/II or BOSS/eBOSS); FormatError (naming the file) when it is
    not one."""
    path = Path(path)
    if id_from not in ID_SOURCES:
        raise InputError(f"unknown id source {id_from!r}; expected one of {ID_SOURCES}")
    with contextlib.closing(read_fits(path)) as hdul:
        names = [h.name for h in hdul]
        table = next((n for n in REDSHIFT_HDUS if n in names), None)
        if COADD not in names or table is None:
            raise FormatError(
                f"{path}: not an SDSS spec file (HDUs {names}; expected COADD and SPECOBJ, or SPALL for BOSS)"
            )
        coadd, specobj = hdul[COADD].data, hdul[table].data
        need = {"flux", "loglam", "ivar", "and_mask"} - {c.lower() for c in coadd.columns.names}
        if need:
            raise FormatError(f"{path}: COADD lacks columns {sorted(need)}")
        if len(specobj) != 1:
            raise FormatError(f"{path}: {table} has {len(specobj)} rows, expected the one of this spectrum")
        row = {name.upper(): specobj[name][0] for name in specobj.columns.names}
        if "FIBERID" not in row and "FIBER" in row:
            row["FIBERID"] = row["FIBER"]
        plate, mjd, fiber = (int(row.get(k, -1)) for k in ("PLATE", "MJD", "FIBERID"))
        return SdssSpectrum(
            path=path,
            object_id=_object_id(row, id_from, path),
            ra=float(row.get("PLUG_RA", np.nan)),
            dec=float(row.get("PLUG_DEC", np.nan)),
            z=float(row["Z"]) if "Z" in row else float("nan"),
            zwarning=int(row.get("ZWARNING", 0)),
            plate=plate,
            mjd=mjd,
            fiber=fiber,
            loglam=np.asarray(coadd["loglam"], dtype=np.float64),
            flux=np.asarray(coadd["flux"], dtype=np.float64),
            ivar=np.asarray(coadd["ivar"], dtype=np.float64),
            and_mask=np.asarray(coadd["and_mask"], dtype=np.int64),
            spec_class=str(row.get("CLASS", "")).strip().upper(),
        )


def _object_id(row: dict, id_from: str, path: Path) -> int:
    pmf_ok = all(int(row.get(k, -1)) >= 0 for k in ("PLATE", "MJD", "FIBERID"))
    pmf = plate_mjd_fiber_id(row["PLATE"], row["MJD"], row["FIBERID"]) if pmf_ok else None
    if id_from != "plate-mjd-fiber":
        value = _as_int(row.get(id_from.upper()))
        if value is not None and 0 < value <= _INT64_MAX:
            return value
        if id_from == "bestobjid":
            raise InputError(f"{path}: no usable BESTOBJID ({row.get('BESTOBJID')!r})")
    if pmf is None:
        raise InputError(f"{path}: no usable {id_from.upper()} and no PLATE/MJD/FIBERID to make an id")
    return pmf


def _as_int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def prepare_spectrum(
    spec: SdssSpectrum,
    allow_zwarning: bool = False,
    min_grid_coverage: float = D.MIN_GRID_COVERAGE,
    classes: tuple[str, ...] | None = D.SPECTRA_CLASSES,
) -> RestSpectrum:
    """Rest-frame, resampled, normalised spectrum of ``spec``; InputError (naming the file, the
    reason in physical terms) when it is not a galaxy of ``classes`` (None: any), has no usable
    redshift, a ZWARNING or too little of the grid covered."""
    if classes is not None and spec.spec_class and spec.spec_class not in classes:
        what = _CLASS_WORDS.get(spec.spec_class, f"not one of {', '.join(classes)}")
        raise InputError(f"{spec.path}: CLASS={spec.spec_class} ({what}); pass --classes to keep it")
    if not np.isfinite(spec.z):
        raise InputError(f"{spec.path}: no redshift measured (Z={spec.z})")
    if spec.z <= 0:
        raise InputError(
            f"{spec.path}: Z={spec.z:.5f} is no galaxy redshift (z <= 0: not receding, so a star or a "
            "failed fit)"
        )
    if spec.zwarning != 0 and not allow_zwarning:
        raise InputError(
            f"{spec.path}: ZWARNING={spec.zwarning} ({zwarning_text(spec.zwarning)}); "
            "pass --allow-zwarning to keep it"
        )
    if not (np.isfinite(spec.ra) and np.isfinite(spec.dec)):
        raise InputError(f"{spec.path}: no sky position (PLUG_RA/PLUG_DEC missing or not finite)")
    try:
        edges = 10.0 ** edges_from_centers(spec.loglam)
    except InputError as exc:
        raise InputError(f"{spec.path}: COADD loglam: {exc}") from None
    valid = spec.and_mask == 0
    try:
        rest: RestSpectrum | None = rest_frame_spectrum(edges, spec.flux, spec.ivar, valid, spec.z)
        covered = rest.grid_coverage
    except InputError:  # nothing positive to normalise by: find out why
        rest = None
        covered = float(np.mean(resample(edges / (1 + spec.z), spec.flux, spec.ivar, valid).ivar > 0))
    if rest is None or covered < min_grid_coverage:
        raise InputError(f"{spec.path}: {_coverage_reason(spec, edges, covered, min_grid_coverage)}")
    return rest


def _coverage_reason(spec: SdssSpectrum, edges: np.ndarray, covered: float, needed: float) -> str:
    """Why so little of the rest-frame grid has data: the redshift moved it out of the observed
    range, or the pixels there are masked (or, with both fine, no positive flux to normalise by)."""
    s = 1.0 + spec.z
    lo, hi = WAVE_EDGES[0] * s, WAVE_EDGES[-1] * s
    where = f"observed {lo:.0f}-{hi:.0f} A"
    if covered >= needed:
        return (
            f"the flux at {where} (the rest-frame grid at z={spec.z:.4f}) does not average above zero: "
            "no continuum to normalise by"
        )
    what = f"{covered:.0%} of the rest-frame grid has data (needs {needed:.0%})"
    in_range = np.mean((WAVE * s >= edges[0]) & (WAVE * s <= edges[-1]))
    if in_range < needed:
        return (
            f"z={spec.z:.4f} puts the rest-frame grid {WAVE_EDGES[0]:.0f}-{WAVE_EDGES[-1]:.0f} A at {where}, "
            f"{'mostly ' if in_range else ''}outside the observed {edges[0]:.0f}-{edges[-1]:.0f} A: {what}"
        )
    there = (10.0**spec.loglam >= lo) & (10.0**spec.loglam <= hi)
    bad = np.mean((spec.and_mask != 0)[there] | (spec.ivar <= 0)[there])
    return f"{what}: {bad:.0%} of the pixels at {where} are masked (and_mask set or ivar=0)"


def find_spectra(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories expanded to their ``spec-*.fits*`` files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        out.extend(sorted(p.glob("spec-*.fits*")) if p.is_dir() else [p])
    return out


def ingest_spectra(
    inputs: Iterable[str | Path],
    output: str | Path,
    *,
    id_from: str = D.SPECTRA_ID_FROM,
    allow_zwarning: bool = False,
    min_grid_coverage: float = D.MIN_GRID_COVERAGE,
    classes: tuple[str, ...] | None = D.SPECTRA_CLASSES,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = False,
) -> IngestReport:
    """SDSS spectra to a Parquet spectra table at ``output``.

    A spectrum that cannot be used (bad file, a CLASS not in ``classes``, missing redshift,
    ZWARNING, duplicate id, too little coverage) is quarantined (``<output>.quarantine.csv``)
    while the rest go on; with ``strict`` the first problem raises instead. Raises InputError
    when nothing could be ingested.
    """
    output = Path(output)
    if id_from not in ID_SOURCES:
        raise InputError(f"unknown id source {id_from!r}; expected one of {ID_SOURCES}")
    check_output_free(output, overwrite)
    paths = find_spectra(inputs)
    cols: dict[str, list] = {k: [] for k in ("object_id", "ra", "dec", "z", "flux", "ivar", NORM)}
    extra: dict[str, list] = {"plate": [], "mjd": [], "fiber": []}
    quarantined: list[Quarantined] = []
    seen: dict[int, Path] = {}
    for path in track(paths, len(paths), "spectra", progress):
        spec = None
        try:
            spec = read_sdss_spectrum(path, id_from)
            if spec.object_id in seen:
                other = seen[spec.object_id]
                raise InputError(f"{path}: duplicate object id {spec.object_id} (also in {other})")
            rest = prepare_spectrum(spec, allow_zwarning, min_grid_coverage, classes)
        except (GalspecError, FileNotFoundError) as exc:
            if strict:
                raise
            quarantined.append(Quarantined(str(path), spec.object_id if spec else None, str(exc)))
            continue
        seen[spec.object_id] = path
        for key, value in (("object_id", spec.object_id), ("ra", spec.ra), ("dec", spec.dec), ("z", spec.z)):
            cols[key].append(value)
        cols["flux"].append(rest.flux)
        cols["ivar"].append(rest.ivar)
        cols[NORM].append(rest.norm)
        for key in extra:
            extra[key].append(getattr(spec, key))
    n = len(cols["object_id"])
    if n:
        table = spectra_to_table(
            np.array(cols["object_id"], dtype=np.int64),
            np.array(cols["ra"]),
            np.array(cols["dec"]),
            np.array(cols["z"]),
            np.stack(cols["flux"]),
            np.stack(cols["ivar"]),
            extra={NORM: np.array(cols[NORM]), **{k: np.array(v, np.int32) for k, v in extra.items()}},
        )
        write_spectra_table(output, table, overwrite=overwrite)
    return finish(output, n, quarantined, len(paths))
