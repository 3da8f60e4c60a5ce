"""Read a finished catalog without lsdb: its provenance and its rows as an Arrow table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds

from galspec_batch.atomic import read_json
from galspec_batch.catalog import hats_files, paths, state
from galspec_batch.errors import IncompleteOutputError, MissingFileError


def read_provenance(path: str | Path) -> dict:
    """The provenance document of a finished catalog (``galspec-provenance.json``)."""
    f = Path(path) / paths.PROVENANCE_FILENAME
    if not f.exists():
        _require_complete(Path(path))
        raise MissingFileError(f"catalog {path} has no {paths.PROVENANCE_FILENAME}")
    return read_json(f)


def read_calibration(path: str | Path) -> dict | None:
    """The calibration a finished catalog was predicted with (``Calibration.record()``: targets,
    scale, nu, ...), or None for a catalog of the network's own spreads."""
    doc = read_provenance(path)
    return doc.get("provenance", doc).get("calibration") or None


def calibration_values(record: dict, key: str, targets: list[str]) -> np.ndarray:
    """One per-target field of a calibration record (``scale``, ``nu``) for ``targets``, in their order."""
    return np.array([record[key][record["targets"].index(t)] for t in targets], np.float64)


def read_catalog(
    path: str | Path, columns: list[str] | None = None, filter: pds.Expression | None = None
) -> pa.Table:
    """Rows of a finished catalog as one Arrow table (through ``dataset/_metadata``), e.g.
    ``read_catalog(p, ["object_id", "latent_1"], pds.field("quality_flags") == 0)``."""
    path = Path(path)
    require_whole(path)
    meta = paths.dataset_dir(path) / paths.PARQUET_METADATA_FILENAME
    return pds.parquet_dataset(str(meta)).to_table(columns=columns, filter=filter)


def _require_complete(path: Path) -> None:
    if not paths.run_state_file(path).exists():
        raise MissingFileError(f"{path} is not a galspec catalog: {paths.run_state_file(path)} is missing")
    if not paths.complete_file(path).exists():
        raise IncompleteOutputError(
            f"catalog {path} is not finished (no {paths.complete_file(path)}); "
            "rerun `galspec predict` with the same settings to finish it"
        )


def require_whole(path: Path, partitions: list[tuple[int, int]] | None = None) -> None:
    """Refuse to read a catalog that is not finished, or whose partitions (default: all) do not
    match their done markers byte for byte (sha256): every row served is a row written."""
    _require_complete(path)
    whole = partitions is None
    if whole:
        partitions = state.read_run_state(path).planned() or state.list_markers(path, paths.DONE_DIR)
    for order, pixel in partitions:
        why = state.check_partition(path, order, pixel, checksum=True)
        if why is not None:
            raise IncompleteOutputError(
                f"catalog {path}: partition Norder={order} Npix={pixel} is damaged ({why}); rerun "
                "`galspec predict` with the same settings to repair it (`galspec verify` lists all)"
            )
    if whole:
        problems = hats_files.check_all(path, [state.read_done(path, o, p) for o, p in partitions])
        if problems:
            raise IncompleteOutputError(f"catalog {path}: {problems[0]}; rerun `galspec predict` with the "
                                        "same settings to write it again")
