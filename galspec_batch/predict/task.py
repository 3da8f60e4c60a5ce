"""The unit of batch work: one task's pieces of the store, read -> predict -> write.

A task feeds its rows to the model as one stream (:mod:`galspec_batch.predict.feed`: read ahead
in a thread into reused buffers, so I/O overlaps compute across the small partitions a task
packs), writes each whole partition as soon as its rows are done, and hands back the rows of a
slice of a big partition for :func:`write_slices`. Memory holds a few batches of images plus the
task's output rows.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galspec_batch.catalog import Outputs, write_partition
from galspec_batch.columns import (
    DEC,
    HEALPIX,
    MC_SAMPLES,
    MODEL_ID,
    OBJECT_ID,
    QUALITY_FLAGS,
    RA,
    QualityFlag,
)
from galspec_batch.errors import GalspecError, first_line, raise_if_signalled
from galspec_batch.predict.feed import run_feed
from galspec_batch.predict.tasks import Piece, Task
from galspec_batch.predict.worker import ModelSpec, Predictor, get_predictor, trim_freed_memory
from galspec_batch.store import Partition, open_store
from galspec_batch.store.reader import batch_groups

_COLUMNS = {"object_id": np.int64, "ra": np.float64, "dec": np.float64, "healpix_29": np.int64,
            "flags": np.uint16}


class PieceFailed(GalspecError, RuntimeError):
    """A task stopped in one of its partitions; the message names it."""


@dataclass(frozen=True)
class TaskJob:
    store: str
    catalog: str
    task: Task
    model_id: str
    outputs: Outputs


def run_task(job: TaskJob, spec: ModelSpec, on_rows: Callable[[int], None] | None = None) -> dict:
    """Predict the task's pieces and write its whole partitions; returns counts and, under
    ``slices``, the table of each slice of a big partition by (order, pixel, index)."""
    predictor = get_predictor(spec)
    store = open_store(job.store)
    pieces = job.task.pieces
    region = spec.options.region
    # which piece a store row belongs to (pieces' rows are disjoint), and where each piece ends
    spans = sorted((a, b, i) for i, p in enumerate(pieces) for a, b in p.ranges)
    starts = np.array([a for a, _, _ in spans], np.int64)
    owner_of = np.array([i for _, _, i in spans], np.int64)
    ends = np.cumsum([p.n for p in pieces])
    acc: list[dict[str, list[np.ndarray]]] = [{} for _ in pieces]
    result: dict = {"rows": 0, "written": [], "slices": {}, "written_by": _written_by(predictor)}
    pos, current = 0, 0
    groups = batch_groups([r for p in pieces for r in p.ranges], spec.options.batch_size)
    select = None if region is None else (lambda b: region.contains(b.ra, b.dec))
    try:
        for batch, predicted, n_read in run_feed(predictor, store, groups, select):
            raise_if_signalled()
            pos += n_read
            who = owner_of[np.searchsorted(starts, batch.rows, side="right") - 1]
            for i in np.unique(who):
                sel = who == i
                for k, v in predicted.items():
                    acc[i].setdefault(k, []).append(v[sel])
                for k in _COLUMNS:
                    acc[i].setdefault(k, []).append(getattr(batch, k)[sel])
            while current < len(pieces) and ends[current] <= pos:  # every row of this piece is in
                _finish(job, spec, pieces[current], acc[current], result)
                acc[current] = {}
                current += 1
            if on_rows is not None:
                on_rows(len(batch.rows))
            trim_freed_memory()
        while current < len(pieces):  # pieces of no rows
            _finish(job, spec, pieces[current], acc[current], result)
            current += 1
    except Exception as exc:
        name = pieces[min(current, len(pieces) - 1)].partition.name
        raise PieceFailed(f"{name}: {type(exc).__name__}: {first_line(exc)}") from exc
    return result


def _finish(job: TaskJob, spec: ModelSpec, piece: Piece, acc: dict[str, list[np.ndarray]],
            result: dict) -> None:
    table = _table(job, spec, acc)
    result["rows"] += table.num_rows
    part = piece.partition
    if piece.whole:
        write_partition(job.catalog, part.order, part.pixel, table, written_by=result["written_by"])
        result["written"].append((part.order, part.pixel))
    else:
        result["slices"][(part.order, part.pixel, piece.index)] = table


def write_slices(catalog: str, partition: Partition, of: int, *results: dict) -> dict:
    """Write a partition cut into ``of`` slices from the results of the tasks that ran them."""
    key = (partition.order, partition.pixel)
    tables = {i: r["slices"][(*key, i)] for r in results for i in range(of) if (*key, i) in r["slices"]}
    missing = sorted(set(range(of)) - set(tables))
    if missing:
        raise PieceFailed(f"{partition.name}: slices {missing} of {of} are missing")
    write_partition(catalog, *key, pa.concat_tables([tables[i] for i in range(of)]),
                    written_by=results[0]["written_by"])
    return {"rows": 0, "written": [key], "slices": {}}


def _written_by(predictor: Predictor) -> dict:
    return {"engine": predictor.engine.name, "device": str(predictor.device), "host": socket.gethostname()}


def _table(job: TaskJob, spec: ModelSpec, acc: dict[str, list[np.ndarray]]) -> pa.Table:
    """One piece's catalog rows; a prediction that is not a finite number is never written as one:
    null, and the row flagged."""
    cat = {k: np.concatenate(acc[k]) if k in acc else np.zeros(0, dtype) for k, dtype in _COLUMNS.items()}
    out = {k: np.concatenate(v) for k, v in acc.items() if k not in _COLUMNS}
    n = len(cat["object_id"])
    bad = ~np.all([np.isfinite(v).all(axis=1) for v in out.values()], axis=0) if n else np.zeros(0, bool)
    flags = np.where(bad, cat["flags"] | np.uint16(QualityFlag.BAD_PREDICTION), cat["flags"])
    table = {
        OBJECT_ID: pa.array(cat["object_id"], pa.int64()),
        RA: pa.array(cat["ra"], pa.float64()),
        DEC: pa.array(cat["dec"], pa.float64()),
        HEALPIX: pa.array(cat["healpix_29"], pa.int64()),
    }
    for key, columns in job.outputs.by_part().items():
        for i, c in enumerate(columns):
            values = out[key][:, i] if n else np.zeros(0, np.float32)
            table[c] = pa.array(values, pa.float32(), mask=bad)
    table[MC_SAMPLES] = pa.array(np.full(n, spec.options.mc_samples), pa.int16())
    table[QUALITY_FLAGS] = pa.array(flags, pa.uint16())
    table[MODEL_ID] = pa.array([job.model_id] * n, pa.string())
    return pa.table(table)
