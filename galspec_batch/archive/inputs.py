"""The catalogs a download reads: objects by position (object_id, ra, dec) for cutouts, and SDSS
spectra by plate, MJD and fiber (optional run2d). Column names are matched without regard to
case; a row that cannot be used is quarantined, naming its line, while the rest go on."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from galspec_batch.archive.base import Target
from galspec_batch.columns import DEC, OBJECT_ID, RA
from galspec_batch.errors import FormatError, InputError, MissingFileError
from galspec_batch.ingest.quarantine import Quarantined

_INT64 = re.compile(r"-?\d{1,19}")
_RUN2D = re.compile(r"\d{1,4}|v\d{1,2}_\d{1,2}_\d{1,2}")
FIBER_COLUMNS = ("fiberid", "fiber")


@dataclass(frozen=True)
class SpectrumId:
    """One SDSS spectrum asked for: plate, MJD, fiber, the reduction (run2d) if the catalog gives it."""

    plate: int
    mjd: int
    fiber: int
    run2d: str | None
    label: str


def read_rows(path: str | Path, required: tuple[tuple[str, ...], ...]) -> list[tuple[str, dict[str, str]]]:
    """(label, {lower-case column: stripped cell}) per row of a CSV; each entry of ``required`` is a
    column's accepted names. MissingFileError, FormatError or InputError for the file as a whole."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"catalog {path} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:  # pandas raises many kinds for a file that is not CSV
        raise FormatError(f"{path}: not a readable CSV ({str(exc).splitlines()[0][:120]})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [names[0] for names in required if not set(names) & set(df.columns)]
    if missing:
        raise InputError(f"catalog {path} lacks columns {missing} (has {list(df.columns)})")
    return [(f"{path} line {i + 2}", {k: str(v).strip() for k, v in row.items()})
            for i, row in enumerate(df.to_dict("records"))]


def read_targets(path: str | Path) -> tuple[list[Target], list[Quarantined]]:
    """Objects by position; bad ids or positions and repeated ids are quarantined."""
    targets: list[Target] = []
    bad: list[Quarantined] = []
    seen: dict[int, str] = {}
    for label, row in read_rows(path, ((OBJECT_ID,), (RA,), (DEC,))):
        key = row[OBJECT_ID]
        if not _INT64.fullmatch(key) or not -(2**63) <= int(key) < 2**63:
            bad.append(Quarantined(label, None, f"{label}: object_id {key[:40]!r} is not an int64"))
            continue
        oid = int(key)
        try:
            ra, dec = float(row[RA]), float(row[DEC])
        except ValueError:
            ra = dec = float("nan")
        if not (math.isfinite(ra) and math.isfinite(dec) and -90 <= dec <= 90):
            bad.append(Quarantined(label, oid, f"{label}: ra/dec {row[RA][:30]!r}, {row[DEC][:30]!r} "
                                               "is not a sky position in degrees"))
            continue
        if oid in seen:
            bad.append(Quarantined(label, oid, f"{label}: object_id {oid} repeats {seen[oid]}"))
            continue
        seen[oid] = label
        targets.append(Target(oid, ra % 360.0, dec, label))
    return targets, bad


def read_spectrum_ids(path: str | Path) -> tuple[list[SpectrumId], list[Quarantined]]:
    """SDSS spectra by plate, mjd, fiberid (or fiber) and optional run2d; a spectrum listed twice
    is fetched once."""
    out: list[SpectrumId] = []
    bad: list[Quarantined] = []
    seen: set[tuple[int, int, int]] = set()
    for label, row in read_rows(path, (("plate",), ("mjd",), FIBER_COLUMNS)):
        fiber_text = next(row[c] for c in FIBER_COLUMNS if c in row)
        try:
            plate, mjd, fiber = int(row["plate"]), int(row["mjd"]), int(fiber_text)
        except ValueError:
            plate = mjd = fiber = -1
        if not (0 < plate < 100_000 and 10_000 <= mjd < 100_000 and 0 < fiber <= 1000):
            given = f"{row['plate'][:12]!r}, {row['mjd'][:12]!r}, {fiber_text[:12]!r}"
            bad.append(Quarantined(label, None, f"{label}: plate/mjd/fiber {given} is not an SDSS spectrum"))
            continue
        run2d = row.get("run2d") or None
        if run2d is not None and not _RUN2D.fullmatch(run2d):
            bad.append(Quarantined(label, None, f"{label}: run2d {run2d[:20]!r} is not an SDSS reduction "
                                                "(26, 103, 104 or v5_13_2, ...)"))
            continue
        if (plate, mjd, fiber) not in seen:
            seen.add((plate, mjd, fiber))
            out.append(SpectrumId(plate, mjd, fiber, run2d, label))
    return out, bad
