"""SDSS ``spec-PLATE-MJD-FIBER.fits`` spectra to the rest-frame spectra table.

Reads HDU1 COADD (``flux``, ``loglam``, ``ivar``, ``and_mask``) and HDU2 SPECOBJ (``Z``,
``ZWARNING``, ``PLUG_RA``, ``PLUG_DEC``, ids), shifts to the rest frame with ``Z``, resamples
onto the 1000-bin grid and normalises (``galspec_batch.spectra``). Pixels with ``and_mask != 0``
or ``ivar == 0`` are masked. Object ids: ``SPECOBJID`` by default (unique per spectrum; falls
back to the plate-mjd-fiber id when absent or beyond int64), ``BESTOBJID`` (the photometric
object, so repeat spectra of a galaxy share it) or ``plate-mjd-fiber``:
``plate * 10**9 + mjd * 10**4 + fiber`` (266, 51602, 166 -> 266516020166).
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
from galspec_batch.spectra import RestSpectrum, edges_from_centers, rest_frame_spectrum
from galspec_batch.spectra_table import spectra_to_table, write_spectra_table

ID_SOURCES = ("specobjid", "bestobjid", "plate-mjd-fiber")
COADD, SPECOBJ = "COADD", "SPECOBJ"
_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class SdssSpectrum:
    """One SDSS spectrum as read from its file (observed frame, SDSS units)."""

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


def plate_mjd_fiber_id(plate: int, mjd: int, fiber: int) -> int:
    """``plate * 10**9 + mjd * 10**4 + fiber``: the decimal digits read plate|mjd|fiber."""
    return int(plate) * 10**9 + int(mjd) * 10**4 + int(fiber)


def read_sdss_spectrum(path: str | Path, id_from: str = "specobjid") -> SdssSpectrum:
    """Read one ``spec-*.fits``; raises FormatError (naming the file) when it is not one."""
    path = Path(path)
    if id_from not in ID_SOURCES:
        raise InputError(f"unknown id source {id_from!r}; expected one of {ID_SOURCES}")
    with contextlib.closing(read_fits(path)) as hdul:
        names = [h.name for h in hdul]
        if COADD not in names or SPECOBJ not in names:
            raise FormatError(f"{path}: not an SDSS spec file (HDUs {names}, expected COADD and SPECOBJ)")
        coadd, specobj = hdul[COADD].data, hdul[SPECOBJ].data
        need = {"flux", "loglam", "ivar", "and_mask"} - {c.lower() for c in coadd.columns.names}
        if need:
            raise FormatError(f"{path}: COADD lacks columns {sorted(need)}")
        if len(specobj) != 1:
            raise FormatError(f"{path}: SPECOBJ has {len(specobj)} rows, expected 1")
        row = {name.upper(): specobj[name][0] for name in specobj.columns.names}
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
        )


def _object_id(row: dict, id_from: str, path: Path) -> int:
    pmf_ok = all(row.get(k, -1) >= 0 for k in ("PLATE", "MJD", "FIBERID"))
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
    spec: SdssSpectrum, allow_zwarning: bool = False, min_grid_coverage: float = 0.5
) -> RestSpectrum:
    """Rest-frame, resampled, normalised spectrum of ``spec``; InputError (naming the file) when
    its redshift is missing or flagged, or it covers less than ``min_grid_coverage`` of the grid."""
    if not np.isfinite(spec.z) or spec.z <= 0:
        raise InputError(f"{spec.path}: no usable redshift (Z = {spec.z}); expected a finite Z > 0")
    if spec.zwarning != 0 and not allow_zwarning:
        raise InputError(
            f"{spec.path}: ZWARNING = {spec.zwarning} (unreliable redshift); pass --allow-zwarning to keep it"
        )
    if not (np.isfinite(spec.ra) and np.isfinite(spec.dec)):
        raise InputError(f"{spec.path}: no PLUG_RA/PLUG_DEC position")
    edges = 10.0 ** edges_from_centers(spec.loglam)
    try:
        rest = rest_frame_spectrum(edges, spec.flux, spec.ivar, spec.and_mask == 0, spec.z)
    except InputError as exc:
        raise InputError(f"{spec.path}: {exc}") from exc
    if rest.grid_coverage < min_grid_coverage:
        raise InputError(
            f"{spec.path}: covers {rest.grid_coverage:.0%} of the rest-frame grid at z = {spec.z:.4f} "
            f"(needs {min_grid_coverage:.0%})"
        )
    return rest


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
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = False,
) -> IngestReport:
    """SDSS spectra to a Parquet spectra table at ``output``.

    A spectrum that cannot be used (bad file, missing redshift, duplicate id, too little
    coverage) is quarantined (``<output>.quarantine.csv``) while the rest go on; with ``strict``
    the first problem raises instead. Raises InputError when nothing could be ingested.
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
            rest = prepare_spectrum(spec, allow_zwarning, min_grid_coverage)
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
