"""Read a catalog's state and contents without lsdb: progress counts, provenance, a table."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pds

from galspec_batch.atomic import read_json
from galspec_batch.catalog import paths, state
from galspec_batch.errors import IncompleteOutputError, MissingFileError


def catalog_status(path: str | Path) -> dict:
    """Progress of a catalog from its run state alone (the store is not needed).

    Keys: complete, partition_order, planned (None without a recorded plan), done, failed,
    pending (None without a plan), objects_done, objects_planned (None when unknown),
    failures ({"Norder=k Npix=p": error}).
    """
    path = Path(path)
    run = state.read_run_state(path)
    done, objects_done = set(), 0
    for o, p in state.list_markers(path, paths.DONE_DIR):
        marker = state.read_done(path, o, p)
        f = paths.partition_file(path, o, p)
        if marker is not None and f.exists() and os.path.getsize(f) == marker.bytes:
            done.add((o, p))
            objects_done += marker.n_rows
    failures = {k: v for k, v in state.read_failed(path).items() if k not in done}
    planned = run.planned()
    expected = None
    if run.plan is not None and all(n >= 0 for *_, n in run.plan):
        expected = sum(n for *_, n in run.plan)
    return {
        "complete": paths.complete_file(path).exists(),
        "partition_order": run.partition_order,
        "planned": None if planned is None else len(planned),
        "done": len(done),
        "failed": len(failures),
        "pending": None if planned is None else len(set(planned) - done - set(failures)),
        "objects_done": objects_done,
        "objects_planned": expected,
        "failures": {f"Norder={o} Npix={p}": msg for (o, p), msg in sorted(failures.items())},
    }


def read_provenance(path: str | Path) -> dict:
    """The provenance document of a finished catalog (``galspec-provenance.json``)."""
    f = Path(path) / paths.PROVENANCE_FILENAME
    if not f.exists():
        _require_complete(Path(path))
        raise MissingFileError(f"catalog {path} has no {paths.PROVENANCE_FILENAME}")
    return read_json(f)


def read_catalog(
    path: str | Path, columns: list[str] | None = None, filter: pds.Expression | None = None
) -> pa.Table:
    """Rows of a finished catalog as one Arrow table (through ``dataset/_metadata``), e.g.
    ``read_catalog(p, ["object_id", "latent_1"], pds.field("quality_flags") == 0)``."""
    path = Path(path)
    _require_complete(path)
    meta = paths.dataset_dir(path) / paths.PARQUET_METADATA_FILENAME
    return pds.parquet_dataset(str(meta)).to_table(columns=columns, filter=filter)


def _require_complete(path: Path) -> None:
    if not paths.run_state_file(path).exists():
        raise MissingFileError(f"{path} is not a galspec catalog: {paths.run_state_file(path)} is missing")
    if not paths.complete_file(path).exists():
        raise IncompleteOutputError(
            f"catalog {path} is not finished (no {paths.complete_file(path)}); "
            "rerun the prediction to complete it"
        )
