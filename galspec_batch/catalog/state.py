"""The run state of a catalog being written: ``_state/run.json``, the schema, and one small JSON
marker per finished (``done/``) or failed (``failed/``) partition.

Workers write only their own partition's markers; only the coordinator writes ``run.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from galspec_batch.atomic import atomic_path, file_sha256, write_json
from galspec_batch.catalog import paths
from galspec_batch.errors import FormatError, MissingFileError

Pixel = tuple[int, int]


@dataclass(frozen=True)
class RunState:
    """What a catalog was begun with; a resumed run must agree with it."""

    store_fingerprint: str
    partition_order: int
    n_latents: int
    provenance: dict
    created: str
    model_id: str | None = None
    plan: list[list[int]] | None = None  # [order, pixel, expected rows or -1]
    resumes: list[dict] = field(default_factory=list)
    format_version: int = paths.FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunState:
        if d.get("format_version") != paths.FORMAT_VERSION:
            raise FormatError(
                f"catalog run state has format_version {d.get('format_version')!r}; "
                f"this galspec reads version {paths.FORMAT_VERSION}"
            )
        return cls(**d)

    def planned(self) -> list[Pixel] | None:
        return None if self.plan is None else [(o, p) for o, p, _ in self.plan]

    def expected_rows(self, order: int, pixel: int) -> int | None:
        for o, p, n in self.plan or ():
            if (o, p) == (order, pixel):
                return None if n < 0 else n
        return None


@dataclass(frozen=True)
class DoneMarker:
    """Evidence that one partition file was written whole."""

    order: int
    pixel: int
    n_rows: int
    min_id: int | None
    max_id: int | None
    bytes: int
    sha256: str
    written: str


def read_run_state(catalog: str | Path) -> RunState:
    f = paths.run_state_file(catalog)
    if not f.exists():
        raise MissingFileError(f"{catalog} is not a galspec catalog: {f} is missing")
    try:
        return RunState.from_dict(json.loads(f.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise FormatError(f"{f} is not a valid catalog run state: {exc}") from None


def write_run_state(catalog: str | Path, state: RunState) -> None:
    write_json(paths.run_state_file(catalog), state.to_dict())


def write_schema(catalog: str | Path, schema: pa.Schema) -> None:
    with atomic_path(paths.schema_file(catalog), overwrite=True) as tmp:
        pq.write_metadata(schema, tmp)


def read_schema(catalog: str | Path) -> pa.Schema:
    f = paths.schema_file(catalog)
    if not f.exists():
        raise MissingFileError(f"{catalog} is not a galspec catalog: {f} is missing")
    return pq.read_schema(f)


def write_done(catalog: str | Path, marker: DoneMarker) -> None:
    write_json(paths.done_marker(catalog, marker.order, marker.pixel), asdict(marker))
    paths.failed_marker(catalog, marker.order, marker.pixel).unlink(missing_ok=True)


def read_done(catalog: str | Path, order: int, pixel: int) -> DoneMarker | None:
    """The partition's done marker, or None when it is absent or unreadable."""
    f = paths.done_marker(catalog, order, pixel)
    try:
        return DoneMarker(**json.loads(f.read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
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
    return sorted(paths.parse_marker_name(f.name) for f in d.glob("o*_p*.json"))


def read_failed(catalog: str | Path) -> dict[Pixel, str]:
    out = {}
    for o, p in list_markers(catalog, paths.FAILED_DIR):
        try:
            out[(o, p)] = json.loads(paths.failed_marker(catalog, o, p).read_text())["error"]
        except (OSError, json.JSONDecodeError, KeyError):
            out[(o, p)] = "unreadable failure marker"
    return out


def check_partition(catalog: str | Path, order: int, pixel: int, *, checksum: bool = False) -> str | None:
    """Why the partition is not done (a short reason), or None when its file is whole and marked.

    Cheap by default (size, Parquet footer, row count); ``checksum=True`` also re-hashes the file.
    """
    f = paths.partition_file(catalog, order, pixel)
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
