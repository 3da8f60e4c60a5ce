"""Write a catalog one sky partition at a time, resumably: ``CatalogWriter.begin`` (coordinator),
``write_partition`` (any worker, one partition each), ``CatalogWriter.pending`` and ``finalize``
(coordinator). Two workers never write the same file: each partition has its own Parquet file
and done marker, and only the coordinator writes the shared files."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from galspec_batch import code_version
from galspec_batch.atomic import TMP_MARK, atomic_path, file_sha256, write_json
from galspec_batch.catalog import paths, publish, state
from galspec_batch.catalog.layout import margin_order
from galspec_batch.catalog.schema import DEFAULT_OUTPUTS, Outputs, catalog_schema, conform_table
from galspec_batch.columns import HEALPIX, OBJECT_ID, QualityFlag
from galspec_batch.errors import FormatError, IncompleteOutputError, InputError, MissingFileError, first_line
from galspec_batch.options import Layout

PlanItem = tuple[int, int] | tuple[int, int, int]

PARQUET_KWARGS = {
    "compression": "zstd",
    "row_group_size": 100_000,
    "write_statistics": True,
    "write_page_index": True,
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CatalogWriter:
    """The coordinator's handle on a catalog being written (see ``begin``)."""

    def __init__(self, path: Path, run: state.RunState):
        self.path = path
        self.state = run
        self.repairs: dict[tuple[int, int], str] = {}  # damaged partitions of a finished catalog
        self.metadata_problems: list[str] = []  # its catalog-level files, when they were damaged

    @property
    def complete(self) -> bool:
        """Finished, and (when reopened) found whole."""
        return paths.complete_file(self.path).exists()

    def _reopen_if_damaged(self) -> None:
        """Verify a finished catalog; if a partition is damaged or missing, or a published file
        differs from what finalize published, take back the finished state (complete.json and the
        published collection), so that the damaged partitions are redone and it is published again."""
        planned = self.state.planned() or state.list_markers(self.path, paths.DONE_DIR)
        self.repairs = {(o, p): why for o, p in planned
                        if (why := state.check_partition(self.path, o, p, checksum=True)) is not None}
        self.metadata_problems = [] if self.repairs else publish.check_published(
            self.path, publish.read_manifest(self.path))
        if self.repairs or self.metadata_problems:
            self._unpublish()

    def _unpublish(self) -> None:
        paths.complete_file(self.path).unlink(missing_ok=True)
        publish.remove_published(self.path)
        (self.path / paths.PROVENANCE_FILENAME).unlink(missing_ok=True)

    @classmethod
    def begin(
        cls,
        path: str | Path,
        *,
        outputs: Outputs = DEFAULT_OUTPUTS,
        store_fingerprint: str,
        provenance: dict,
        partition_order: int,
        plan: Sequence[PlanItem] | None = None,
        model_id: str | None = None,
        settings: dict | None = None,
        extra_columns: Sequence[pa.Field] = (),
        layout: Layout | None = None,
        overwrite: bool = False,
        record_resume: bool = True,
    ) -> CatalogWriter:
        """Start a catalog at ``path``, or resume the unfinished one there.

        ``plan`` lists the partitions to write as (order, pixel) or (order, pixel, expected rows);
        with expected rows, a partition of another size is refused. A resume must agree with the
        first run on the store fingerprint, partition order, schema, model, plan and ``settings``
        (the run settings that change values). A complete catalog is verified (every partition
        re-hashed against its done marker); a damaged one is reopened (``repairs`` names the damaged
        partitions, which ``pending`` then lists), so that a rerun repairs it. ``overwrite`` starts
        again from nothing. ``record_resume=False`` checks without writing the run state (for array
        tasks that run concurrently under one coordinator).
        """
        path = Path(path)
        try:
            json.dumps([provenance, settings])
        except TypeError as exc:
            raise InputError(f"provenance for {path} must be JSON-serialisable: {exc}") from None
        schema = catalog_schema(outputs, tuple(extra_columns))
        plan_rows = _plan_rows(plan, partition_order)
        layout = layout or Layout()
        if layout.margin_arcsec:
            margin_order(layout.margin_arcsec, partition_order)  # a margin too wide is refused now
        settings = dict(settings or {})
        if paths.run_state_file(path).exists():
            if overwrite:
                _empty(path)
            else:
                writer = cls(path, state.read_run_state(path))
                writer._check_resume(schema, store_fingerprint, partition_order, plan_rows, model_id,
                                     settings)
                layout = layout.resolved(writer.state.layout)
                relayout = layout.to_dict() != writer.state.layout
                if paths.complete_file(path).exists():
                    writer._reopen_if_damaged()
                    if relayout and record_resume and writer.complete:
                        was, now = writer.state.layout, layout.to_dict()
                        writer.metadata_problems = [f"published with layout {was}, now {now}"]
                        writer._unpublish()
                if record_resume and not writer.complete:
                    writer._record_resume(provenance, plan_rows, layout)
                return writer
        elif path.exists() and _has_content(path):
            raise InputError(f"{path} exists and is not a galspec catalog; choose an empty or new directory")
        run = state.RunState(
            store_fingerprint=store_fingerprint,
            partition_order=int(partition_order),
            outputs=outputs,
            provenance=provenance,
            settings=settings,
            created=_now(),
            model_id=model_id,
            plan=plan_rows,
            layout=layout.resolved().to_dict(),
        )
        paths.state_dir(path).mkdir(parents=True, exist_ok=True)
        state.write_schema(path, schema.with_metadata({paths.SCHEMA_METADATA_KEY: _header(run)}))
        state.write_run_state(path, run)
        return cls(path, run)

    def _check_resume(self, schema, fingerprint, order, plan_rows, model_id, settings) -> None:
        run = self.state
        began = f"catalog {self.path} began {run.created}"
        if run.store_fingerprint != fingerprint:
            raise InputError(
                f"store {fingerprint} changed since the catalog began (the {began} from store "
                f"{run.store_fingerprint}); write a new catalog, or pass --overwrite to start again"
            )
        if run.partition_order != order:
            raise InputError(f"{began} at partition order {run.partition_order}, not {order}")
        try:
            existing = state.read_schema(self.path)
        except (MissingFileError, FormatError):  # derived from the run state: written again
            state.write_schema(self.path, schema.with_metadata({paths.SCHEMA_METADATA_KEY: _header(run)}))
            existing = schema
        if not existing.remove_metadata().equals(schema):
            raise InputError(f"{began} with other columns; the predicted and extra columns must not change")
        if run.model_id != model_id:
            raise InputError(f"{began} with model {run.model_id!r}, not {model_id!r}")
        if plan_rows is not None and run.plan is not None and tuple(map(tuple, plan_rows)) != run.plan:
            raise InputError(f"{began} with another plan of partitions ({len(run.plan)} planned)")
        differ = sorted(k for k in set(run.settings) | set(settings)
                        if run.settings.get(k) != settings.get(k))
        if differ:
            was = ", ".join(f"{k}={run.settings.get(k)}" for k in differ)
            now = ", ".join(f"{k}={settings.get(k)}" for k in differ)
            raise InputError(f"{began} with {was}; this run has {now}. Rerun with the first run's settings "
                             "to resume, or pass --overwrite to start again")

    def _record_resume(self, provenance: dict, plan_rows, layout: Layout) -> None:
        record = {"at": _now(), "code_version": code_version()}
        if provenance != self.state.provenance:
            record["provenance"] = provenance
        run = self.state.resumed(record)
        if run.plan is None and plan_rows is not None:
            run = replace(run, plan=plan_rows)
        if layout.to_dict() != run.layout:
            record["layout"] = layout.to_dict()
            run = replace(run, layout=layout.to_dict())
        state.write_run_state(self.path, run)
        self.state = run

    def pending(self, partitions: Iterable[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        """The partitions (default: the plan) not yet done. The file of a partition that is not
        done (interrupted, truncated, unmarked, or whose bytes differ from its done marker's hash)
        is removed, so that it is redone from scratch."""
        todo = self.state.planned() if partitions is None else [(int(o), int(p)) for o, p in partitions]
        if todo is None:
            raise InputError(f"catalog {self.path} has no recorded plan; pass the partitions to check")
        out = []
        for order, pixel in todo:
            if state.check_partition(self.path, order, pixel, checksum=True) is not None:
                _clear_partition(self.path, order, pixel)
                out.append((order, pixel))
        return out

    def finalize(self) -> dict:
        """Check every partition and publish the catalog as a HATS collection (``catalog.publish``,
        laid out as the run state's ``layout`` says); returns the provenance document.

        Raises IncompleteOutputError naming a partition that is missing, unfinished, damaged (its
        bytes differ from its done marker's hash), or that repeats an object id of another one.
        """
        done = state.list_markers(self.path, paths.DONE_DIR)
        planned = self.state.planned()
        wanted = planned if planned is not None else done
        bad = {}
        for order, pixel in wanted:
            reason = state.check_partition(self.path, order, pixel, checksum=True)
            if reason is not None:
                bad[(order, pixel)] = reason
        if bad:
            (o, p), reason = next(iter(bad.items()))
            raise IncompleteOutputError(
                f"catalog {self.path}: {len(bad)} of {len(wanted)} partitions are not done, "
                f"e.g. Norder={o} Npix={p}: {reason}; rerun `galspec predict` with the same settings "
                "to write them"
            )
        _check_no_strays(self.path, set(wanted))
        markers = [state.read_done(self.path, o, p) for o, p in sorted(wanted)]
        _check_unique_ids(self.path, markers)
        schema = state.read_schema(self.path)
        doc = _provenance_doc(self.path, self.state, markers)
        schema = schema.with_metadata({paths.SCHEMA_METADATA_KEY: json.dumps(doc, sort_keys=True)})
        paths.complete_file(self.path).unlink(missing_ok=True)
        layout = Layout().resolved(self.state.layout)
        files = publish.publish(self.path, markers, schema, self.state, layout, doc)
        write_json(paths.complete_file(self.path), {"finalized": doc["finalized"], "layout": layout.to_dict(),
                                                    "files": files})
        return doc


def write_partition(catalog_path: str | Path, order: int, pixel: int, table: pa.Table,
                    written_by: dict | None = None) -> Path:
    """Validate one partition's rows (see ``conform_table``), sort them by ``_healpix_29`` and write
    the run's file of that store partition (``paths.work_file``) atomically, then its done marker
    (with ``written_by``, e.g. the engine that ran). Safe to call from any worker; rewriting a
    partition replaces it whole."""
    catalog_path = Path(catalog_path)
    run = state.read_run_state(catalog_path)
    if paths.complete_file(catalog_path).exists():
        raise InputError(f"catalog {catalog_path} is complete; it takes no more partitions")
    if order != run.partition_order:
        raise InputError(f"catalog {catalog_path} is partitioned at order {run.partition_order}, not {order}")
    planned = run.planned()
    if planned is not None and (order, pixel) not in planned:
        raise InputError(f"partition Norder={order} Npix={pixel} is not in the plan of {catalog_path}")
    schema = state.read_schema(catalog_path)
    table = conform_table(table, schema, order, pixel, model_id=run.model_id)
    expected = run.expected_rows(order, pixel)
    if table.num_rows == 0 or (expected is not None and table.num_rows != expected):
        raise InputError(
            f"partition Norder={order} Npix={pixel} has {table.num_rows} rows; "
            f"expected {expected if expected is not None else 'at least 1'} (one per store object)"
        )
    target = paths.work_file(catalog_path, order, pixel)
    paths.done_marker(catalog_path, order, pixel).unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, overwrite=True) as tmp:
        pq.write_table(table, tmp, **_parquet_kwargs(schema))
        size, sha = tmp.stat().st_size, file_sha256(tmp)
    ids = table[OBJECT_ID]
    state.write_done(
        catalog_path,
        state.DoneMarker(
            order=order,
            pixel=pixel,
            n_rows=table.num_rows,
            min_id=int(pc.min(ids).as_py()),
            max_id=int(pc.max(ids).as_py()),
            bytes=size,
            sha256=sha,
            written=_now(),
            written_by=dict(written_by or {}),
        ),
    )
    return target


def mark_failed(catalog_path: str | Path, order: int, pixel: int, error: BaseException | str) -> None:
    """Record that a partition failed (shown by ``catalog_status``; cleared when it is written).
    Best effort: a full disk that kept the partition from being written may keep this too, and the
    partition is pending either way."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {first_line(error)}"
    with contextlib.suppress(OSError):
        state.write_failed(catalog_path, order, pixel, message, _now())


def _parquet_kwargs(schema: pa.Schema) -> dict:
    # The same encodings hats uses: byte-stream-split floats, delta-packed sorted spatial index.
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    encoding = {**{n: "BYTE_STREAM_SPLIT" for n in floats}, HEALPIX: "DELTA_BINARY_PACKED"}
    return {
        **PARQUET_KWARGS,
        "column_encoding": encoding,
        "use_dictionary": [n for n in schema.names if n not in encoding],
        "sorting_columns": [pq.SortingColumn(schema.get_field_index(HEALPIX))],
    }


def _plan_rows(plan: Sequence[PlanItem] | None, order: int) -> tuple[tuple[int, int, int], ...] | None:
    if plan is None:
        return None
    rows = []
    for item in plan:
        if len(item) not in (2, 3):
            raise InputError(f"plan items are (order, pixel) or (order, pixel, rows), got {item!r}")
        o, p, n = int(item[0]), int(item[1]), int(item[2]) if len(item) == 3 else -1
        if o != order:
            raise InputError(f"plan partition Norder={o} Npix={p} is not at the partition order {order}")
        rows.append([o, p, n])
    rows.sort()
    for a, b in zip(rows[:-1], rows[1:], strict=True):
        if a[:2] == b[:2]:
            raise InputError(f"plan lists partition Norder={a[0]} Npix={a[1]} twice")
    return tuple(tuple(r) for r in rows)


def _header(run: state.RunState) -> str:
    return json.dumps(
        {
            "format": paths.FORMAT_NAME,
            "format_version": paths.FORMAT_VERSION,
            "code_version": code_version(),
            "created": run.created,
            "store_fingerprint": run.store_fingerprint,
            "model_id": run.model_id,
            "settings": run.settings,
            "provenance": run.provenance,
        },
        sort_keys=True,
    )


def _provenance_doc(path: Path, run: state.RunState, markers: list[state.DoneMarker]) -> dict:
    return {
        **json.loads(_header(run)),
        "code_version": code_version(),
        "finalized": _now(),
        "resumes": list(run.resumes),
        "partition_order": run.partition_order,
        "layout": Layout().resolved(run.layout).to_dict(),
        "outputs": run.outputs.to_dict(),
        "n_partitions": len(markers),
        "n_objects": sum(m.n_rows for m in markers),
        "quality_flags": {f.name: int(f) for f in QualityFlag},
    }


def _has_content(path: Path) -> bool:
    """Anything in ``path`` but a lock file left by a run that never began the catalog."""
    lock = paths.lock_file(path)
    return any(p != lock for p in path.rglob("*") if p.is_file()) or any(
        p for p in path.iterdir() if p.name != paths.STATE_DIR)


def _empty(path: Path) -> None:
    """Remove everything in a catalog directory but its lock (which the caller may hold)."""
    for p in path.iterdir():
        if p.name == paths.STATE_DIR:
            for q in p.iterdir():
                if q != paths.lock_file(path):
                    shutil.rmtree(q) if q.is_dir() else q.unlink()
        else:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _clear_partition(catalog: Path, order: int, pixel: int) -> None:
    target = paths.work_file(catalog, order, pixel)
    target.unlink(missing_ok=True)
    for tmp in target.parent.glob(f"{target.name}{TMP_MARK}*") if target.parent.exists() else ():
        tmp.unlink(missing_ok=True)
    paths.done_marker(catalog, order, pixel).unlink(missing_ok=True)


def _check_no_strays(catalog: Path, wanted: set[tuple[int, int]]) -> None:
    """Refuse Parquet files that are not planned partitions; drop leftovers of killed writes."""
    parts = paths.state_dir(catalog) / paths.PARTS_DIR
    for f in sorted(parts.glob("o*/d*/*")):
        if TMP_MARK in f.name:
            f.unlink(missing_ok=True)
            continue
        try:
            o, p = paths.parse_work_file(f)
        except ValueError:
            o = p = -1
        if (o, p) not in wanted:
            raise InputError(f"catalog {catalog}: {f} is not a partition of this catalog's plan; remove it")


def _check_unique_ids(catalog: Path, markers: list[state.DoneMarker]) -> None:
    """Every object id exactly once across partitions (ids of all partitions held in memory)."""
    ids, owner = [], []
    for i, m in enumerate(markers):
        col = pq.read_table(paths.work_file(catalog, m.order, m.pixel), columns=[OBJECT_ID])
        ids.append(col[OBJECT_ID].to_numpy())
        owner.append(np.full(len(ids[-1]), i, dtype=np.int64))
    if not ids:
        raise IncompleteOutputError(f"catalog {catalog} has no partitions to finalize")
    ids, owner = np.concatenate(ids), np.concatenate(owner)
    order = np.argsort(ids, kind="stable")
    ids, owner = ids[order], owner[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        j = int(dup[0])
        a, b = markers[owner[j]], markers[owner[j + 1]]
        raise IncompleteOutputError(
            f"catalog {catalog}: object_id {ids[j]} appears in partition Norder={a.order} Npix={a.pixel} "
            f"and in Norder={b.order} Npix={b.pixel} ({dup.size} repeated ids in all); "
            "each object must be in exactly one partition"
        )
