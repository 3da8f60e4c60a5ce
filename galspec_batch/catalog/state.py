"""The run state of a catalog being written: ``_state/run.json``, the schema, and one small JSON
marker per finished (``done/``) or failed (``failed/``) partition.

Workers write only their own partition's markers; only the coordinator writes ``run.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from galspec_batch.atomic import atomic_path, file_sha256, read_json, write_json
from galspec_batch.catalog import paths
from galspec_batch.catalog.schema import Outputs
from galspec_batch.errors import FormatError, MissingFileError
from galspec_batch.formats import VersionedFormat, check_int, check_str, require

Pixel = tuple[int, int]


@dataclass(frozen=True)
class RunState(VersionedFormat):
    """What a catalog was begun with; a resumed run must agree with it. ``settings`` are the run
    settings that change values; ``provenance`` the record of model, store and code."""

    FORMAT: ClassVar[str] = "galspec-catalog-run"
    VERSION: ClassVar[int] = paths.FORMAT_VERSION
    MAX_BYTES: ClassVar[int] = 64 << 20

    store_fingerprint: str
    partition_order: int
    outputs: Outputs
    created: str
    provenance: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None
    plan: tuple[tuple[int, int, int], ...] | None = None  # (order, pixel, expected rows or -1)
    layout: dict[str, Any] = field(default_factory=dict)  # the published layout (catalog.layout.Layout)
    resumes: tuple[dict[str, Any], ...] = ()

    def validate(self) -> None:
        check_str("store_fingerprint", self.store_fingerprint, 64)
        check_int("partition_order", self.partition_order, 0, 29)
        require(isinstance(self.outputs, Outputs), "outputs must be an object")
        require(isinstance(self.provenance, dict) and isinstance(self.settings, dict),
                "provenance and settings must be objects")
        if self.plan is not None:
            object.__setattr__(self, "plan", tuple(tuple(int(v) for v in row) for row in self.plan))
            require(all(len(row) == 3 for row in self.plan), "plan rows must be [order, pixel, rows]")
        object.__setattr__(self, "resumes", tuple(self.resumes))
        require(isinstance(self.layout, dict) and set(self.layout) <= {"partition_rows", "margin_arcsec"},
                "layout must be an object of partition_rows and margin_arcsec")

    @classmethod
    def _decode(cls, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        require(isinstance(body["outputs"], dict), "outputs must be an object")
        body["outputs"] = Outputs(**body["outputs"])
        return body

    def planned(self) -> list[Pixel] | None:
        return None if self.plan is None else [(o, p) for o, p, _ in self.plan]

    def expected_rows(self, order: int, pixel: int) -> int | None:
        for o, p, n in self.plan or ():
            if (o, p) == (order, pixel):
                return None if n < 0 else n
        return None

    def resumed(self, record: dict[str, Any]) -> RunState:
        return replace(self, resumes=(*self.resumes, record))


@dataclass(frozen=True)
class DoneMarker:
    """Evidence that one partition file was written whole: its size, rows, ids and sha256."""

    order: int
    pixel: int
    n_rows: int
    min_id: int | None
    max_id: int | None
    bytes: int
    sha256: str
    written: str
    written_by: dict = field(default_factory=dict)  # e.g. the engine that ran


def read_run_state(catalog: str | Path) -> RunState:
    f = paths.run_state_file(catalog)
    if not f.exists():
        raise MissingFileError(f"{catalog} is not a galspec catalog: {f} is missing")
    return RunState.read(f)


def write_run_state(catalog: str | Path, state: RunState) -> None:
    state.write(paths.run_state_file(catalog))


def write_schema(catalog: str | Path, schema: pa.Schema) -> None:
    with atomic_path(paths.schema_file(catalog), overwrite=True) as tmp:
        pq.write_metadata(schema, tmp)


def read_schema(catalog: str | Path) -> pa.Schema:
    f = paths.schema_file(catalog)
    if not f.exists():
        raise MissingFileError(f"catalog {catalog}: {f} is missing; rerun `galspec predict` with the same "
                               "settings to write it again")
    try:
        return pq.read_schema(f)
    except (OSError, pa.ArrowException) as exc:
        raise FormatError(f"catalog {catalog}: {f} is damaged ({exc}); rerun `galspec predict` with the "
                          "same settings to write it again") from None


def write_done(catalog: str | Path, marker: DoneMarker) -> None:
    write_json(paths.done_marker(catalog, marker.order, marker.pixel), vars(marker))
    paths.failed_marker(catalog, marker.order, marker.pixel).unlink(missing_ok=True)


def read_done(catalog: str | Path, order: int, pixel: int) -> DoneMarker | None:
    """The partition's done marker, or None when it is absent or unreadable."""
    f = paths.done_marker(catalog, order, pixel)
    try:
        doc = read_json(f)
        return DoneMarker(**doc) if isinstance(doc, dict) else None
    except (OSError, FormatError, TypeError):
        return None


def write_failed(catalog: str | Path, order: int, pixel: int, message: str, when: str) -> None:
    write_json(
        paths.failed_marker(catalog, order, pixel),
        {"order": order, "pixel": pixel, "error": message, "when": when},
    )


def list_markers(catalog: str | Path, kind: str) -> list[Pixel]:
    """(order, pixel) of every ``done`` or ``failed`` marker."""
    d = paths.state_dir(catalog) / kind
    if not d.exists():
        return []
    return sorted(paths.parse_marker_name(f.name) for f in d.glob(paths.MARKER_GLOB))


def read_failed(catalog: str | Path) -> dict[Pixel, str]:
    out = {}
    for o, p in list_markers(catalog, paths.FAILED_DIR):
        try:
            out[(o, p)] = str(read_json(paths.failed_marker(catalog, o, p))["error"])
        except (OSError, FormatError, KeyError, TypeError):
            out[(o, p)] = "unreadable failure marker"
    return out


def check_partition(catalog: str | Path, order: int, pixel: int, *, checksum: bool = False) -> str | None:
    """Why the partition is not done (a short reason), or None when its file is whole and marked.

    Cheap by default (size, Parquet footer, row count); ``checksum=True`` also re-hashes the file.
    """
    f = paths.work_file(catalog, order, pixel)
    if not f.exists():
        return "no partition file"
    marker = read_done(catalog, order, pixel)
    if marker is None:
        return "partition file without a done marker (interrupted write)"
    size = os.path.getsize(f)
    if size != marker.bytes:
        return f"file has {size} bytes, its done marker says {marker.bytes}"
    try:
        n = pq.read_metadata(f).num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        return f"not a readable Parquet file ({exc})"
    if n != marker.n_rows:
        return f"file has {n} rows, its done marker says {marker.n_rows}"
    if checksum and file_sha256(f) != marker.sha256:
        return "file checksum differs from its done marker"
    return None
