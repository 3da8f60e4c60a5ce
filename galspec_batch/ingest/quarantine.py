"""Batch bookkeeping shared by the ingest commands: the quarantine list written beside an output
(``<output>.quarantine.csv``: path, object_id, reason) and the report a run returns."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from galspec_batch.atomic import atomic_path, refuse_existing
from galspec_batch.columns import OBJECT_ID
from galspec_batch.errors import InputError

QUARANTINE_SUFFIX = ".quarantine.csv"
QUARANTINE_COLUMNS = ("path", OBJECT_ID, "reason")


@dataclass(frozen=True)
class Quarantined:
    """One input left out of a batch, and why (the reason names the file or object)."""

    path: str
    object_id: int | None
    reason: str


@dataclass
class IngestReport:
    """What an ingest run did: rows written to ``output`` and the inputs it quarantined."""

    output: Path
    n_ingested: int
    quarantined: list[Quarantined] = field(default_factory=list)
    quarantine_file: Path | None = None

    def summary(self) -> str:
        text = f"ingested {self.n_ingested} objects into {self.output}"
        if self.quarantined:
            text += f"; quarantined {len(self.quarantined)} (listed in {self.quarantine_file})"
        return text


def quarantine_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + QUARANTINE_SUFFIX)


def write_quarantine(output: str | Path, rows: list[Quarantined]) -> Path | None:
    """Write the quarantine list beside ``output`` (atomically); with no rows, remove a stale one."""
    path = quarantine_path(output)
    if not rows:
        path.unlink(missing_ok=True)
        return None
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(QUARANTINE_COLUMNS)
        for row in rows:
            writer.writerow([row.path, "" if row.object_id is None else row.object_id, row.reason])
    return path


def read_quarantine(output: str | Path) -> list[Quarantined]:
    """The quarantine list beside ``output`` (none when there is no file)."""
    path = quarantine_path(output)
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as fh:
            return [Quarantined(r[QUARANTINE_COLUMNS[0]], int(r[OBJECT_ID]) if r[OBJECT_ID] else None,
                                r[QUARANTINE_COLUMNS[2]]) for r in csv.DictReader(fh)]
    except (OSError, ValueError, KeyError, csv.Error) as exc:
        raise InputError(f"quarantine list {path} cannot be read: {type(exc).__name__}: {exc}") from None


def check_output_free(output: Path, overwrite: bool) -> None:
    """Refuse before any work when the output exists and may not be replaced."""
    refuse_existing(output, overwrite)


def finish(output: Path, n_ingested: int, quarantined: list[Quarantined], n_inputs: int) -> IngestReport:
    """Write the quarantine list; fail when nothing at all could be ingested."""
    qfile = write_quarantine(output, quarantined)
    if n_ingested == 0:
        if not quarantined:
            raise InputError(f"nothing to ingest into {output}: no input files")
        if len(quarantined) == 1:
            raise InputError(quarantined[0].reason)
        first = quarantined[0].reason if quarantined else "no inputs"
        raise InputError(
            f"nothing ingested into {output}: all {n_inputs} inputs were quarantined "
            f"(first: {first}; all listed in {qfile})"
        )
    return IngestReport(output, n_ingested, quarantined, qfile)
