"""The spectra table: rest-frame spectra on the 1000-bin grid, one row per object (Parquet).

Columns: ``object_id`` int64 (unique), ``ra``, ``dec``, ``z`` float64, ``flux`` and ``ivar``
fixed-size lists of 1000 float32, ``norm`` float64 (written by both sources; optional on input),
then optional ``truth_*`` columns (mock survey only) and any other per-object columns. Files carry
the grid, units and descriptions in their metadata (``described_spectra_schema``). Schema
documented in ``catalogs/spectra-table.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from galspec_batch.atomic import atomic_path
from galspec_batch.columns import (
    DEC,
    FLUX,
    IVAR,
    NORM_UNIT,
    OBJECT_ID,
    RA,
    REDSHIFT,
    SPECTRUM_TYPE,
)
from galspec_batch.describe import described_schema
from galspec_batch.errors import FormatError, InputError, MissingFileError
from galspec_batch.spectra import LOGLAM_MAX, LOGLAM_MIN, N_BINS, WAVE, WAVE_EDGES

Z = REDSHIFT
TRUTH_PREFIX = "truth_"
REQUIRED = (OBJECT_ID, RA, DEC, Z, FLUX, IVAR)
GRID_KEY = b"galspec.spectral_grid"  # JSON (``grid_metadata``): schema and spectrum field metadata


def grid_metadata() -> dict:
    """The grid of every spectrum column, its units and the flux normalisation (``spectra.normalise``)."""
    return {
        "wave": WAVE.tolist(), "wave_edges": WAVE_EDGES.tolist(), "wave_unit": "Angstrom",
        "wave_frame": "rest", "wave_medium": "vacuum", "loglam": [LOGLAM_MIN, LOGLAM_MAX, N_BINS],
        "flux_unit": "", "norm_unit": NORM_UNIT,
        "flux_normalisation": "flux = f_lambda / norm, f_lambda rest frame ((1+z) times the observed one), "
                              "norm = its plain mean over the bins with ivar > 0 (flux has mean 1 there); "
                              "ivar = ivar(f_lambda) * norm**2",
    }


def described_spectra_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` described (``describe.described_schema``: units and descriptions in the field
    metadata and astropy's YAML header, the grid as the table's ``meta``), with the grid
    (``GRID_KEY``) on every spectrum column and in the schema metadata."""
    grid = grid_metadata()
    grid_json = json.dumps(grid).encode()
    schema = described_schema(schema, table_meta=grid, vo=False)
    fields = [f.with_metadata({**(f.metadata or {}), GRID_KEY: grid_json}) if f.type == SPECTRUM_TYPE else f
              for f in schema]
    return pa.schema(fields, metadata={**schema.metadata, GRID_KEY: grid_json})


def spectra_to_table(
    object_id: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    z: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    extra: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """Build a spectra table from arrays; ``flux``/``ivar`` are [N, 1000]."""
    flux = np.ascontiguousarray(flux, dtype=np.float32)
    ivar = np.ascontiguousarray(ivar, dtype=np.float32)
    n = len(object_id)
    if flux.shape != (n, N_BINS) or ivar.shape != (n, N_BINS):
        raise InputError(f"flux and ivar must have shape ({n}, {N_BINS}), got {flux.shape} and {ivar.shape}")
    cols = {
        OBJECT_ID: pa.array(np.asarray(object_id, dtype=np.int64)),
        RA: pa.array(np.asarray(ra, dtype=np.float64)),
        DEC: pa.array(np.asarray(dec, dtype=np.float64)),
        Z: pa.array(np.asarray(z, dtype=np.float64)),
        FLUX: pa.FixedSizeListArray.from_arrays(pa.array(flux.reshape(-1)), N_BINS),
        IVAR: pa.FixedSizeListArray.from_arrays(pa.array(ivar.reshape(-1)), N_BINS),
    }
    for name, values in (extra or {}).items():
        cols[name] = pa.array(np.asarray(values))
    return pa.table(cols)


def validate_spectra_table(table: pa.Table, source: str = "spectra table") -> pa.Table:
    """Check columns, types, unique ids and spectrum length; returns the table with canonical types."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"{source} lacks columns {missing} (has {table.column_names})")
    for col in (FLUX, IVAR):
        t = table.schema.field(col).type
        if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
            raise InputError(f"{source}: column {col!r} must be a list of {N_BINS} floats, got {t}")
        lengths = pc.list_value_length(table[col]).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != N_BINS).any():
            row = int(np.flatnonzero(lengths != N_BINS)[0])
            raise InputError(
                f"{source}: object {table[OBJECT_ID][row].as_py()} has a {col} of length "
                f"{lengths[row]}, expected {N_BINS}"
            )
        if t != SPECTRUM_TYPE:
            table = table.set_column(
                table.schema.get_field_index(col), col, table[col].cast(SPECTRUM_TYPE)
            )
    ids = table[OBJECT_ID].to_numpy()
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{source}: duplicate object ids {uniq[counts > 1][:5].tolist()}")
    return table


def spectra_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``flux`` and ``ivar`` as [N, 1000] float32 arrays."""
    out = []
    for col in (FLUX, IVAR):
        chunked = table[col].combine_chunks()
        out.append(chunked.flatten().to_numpy(zero_copy_only=False).reshape(len(table), N_BINS))
    return out[0], out[1]


def write_spectra_table(path: str | Path, table: pa.Table | pd.DataFrame, overwrite: bool = True) -> Path:
    """Validate and write a spectra table atomically, with its metadata (``described_spectra_schema``)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    table = validate_spectra_table(table, str(path))
    table = table.cast(described_spectra_schema(table.schema))
    with atomic_path(path, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def read_spectra_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read and validate a spectra table."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"spectra table {path} does not exist")
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:
        raise FormatError(f"{path} is not a readable Parquet spectra table ({exc})") from exc
    if columns is None or set(REQUIRED) <= set(columns):
        table = validate_spectra_table(table, str(path))
    return table
