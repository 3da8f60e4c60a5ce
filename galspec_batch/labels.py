"""The labels table: observed latents per object (``object_id``, ``latent_1..latent_N``) and,
optionally, the spectroscopic redshift ``z``, as ``galspec vae encode`` writes it; the CNN trains
on it, anomalies and calibration compare with it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galspec_batch.columns import OBJECT_ID, REDSHIFT, count_latents, latent_names
from galspec_batch.errors import FormatError, InputError, MissingFileError

LATENT_LIMIT = 1e4
Z_RANGE = (-0.01, 12.0)  # a spectroscopic redshift outside this is not a galaxy's


@dataclass
class Labels:
    object_id: np.ndarray  # [N] int64, unique
    names: list[str]  # latent_1..latent_L
    values: np.ndarray  # [N, L] float32, finite
    z: np.ndarray | None = None  # [N] float32, the spectroscopic redshift, where the table has it

    def targets(self, redshift: bool) -> tuple[list[str], np.ndarray]:
        """(names, values [N, T]) of the training targets: the latents, then ``z`` if asked for."""
        if not redshift:
            return list(self.names), self.values
        if self.z is None:
            raise InputError(f"the labels have no {REDSHIFT} column to train a redshift on")
        return [*self.names, REDSHIFT], np.concatenate([self.values, self.z[:, None]], axis=1)


def show_ids(ids: np.ndarray, n: int = 5) -> str:
    """A few ids for an error message, e.g. ``[3, 7] and 12 more``."""
    ids = np.asarray(ids)
    more = f" and {ids.size - n} more" if ids.size > n else ""
    return f"{ids[:n].tolist()}{more}"


def read_labels(path: str | os.PathLike, n_latent: int | None = None) -> Labels:
    """Read and check a labels table: an integer ``object_id`` column without nulls, unique ids,
    contiguous numeric latent columns (exactly ``n_latent`` of them when given), finite values of a
    sane size (|latent| <= ``LATENT_LIMIT``: a VAE latent is of order 1)."""
    path = Path(path)
    what = f"labels table {path}"
    if not path.is_file():
        raise MissingFileError(f"{what} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid & co. for non-Parquet files
        raise FormatError(f"{path} is not a readable Parquet labels table ({exc})") from None
    if OBJECT_ID not in table.column_names:
        raise InputError(f"{what} has no {OBJECT_ID} column (columns: {table.column_names})")
    if n_latent is not None:
        missing = [c for c in latent_names(n_latent) if c not in table.column_names]
        if missing:
            raise InputError(f"{what} lacks columns {missing} (has {table.column_names}); "
                             f"expected {n_latent} latents")
    found = count_latents(table.column_names, what)
    if n_latent is not None and found > n_latent:
        raise InputError(f"{what} has {found} latent columns latent_1..latent_{found}; expected {n_latent} "
                         "(labels of another VAE?)")
    names = latent_names(found)
    col = table[OBJECT_ID]
    if not pa.types.is_integer(col.type):
        raise InputError(f"{what}: {OBJECT_ID} is {col.type}; object ids are integers (not converted, "
                         "to keep two ids from becoming one)")
    if col.null_count:
        raise InputError(f"{what} has {col.null_count} rows without an {OBJECT_ID}")
    ids = col.to_numpy().astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{what} has duplicate object ids {show_ids(uniq[counts > 1])}")
    for name in names:
        t = table[name].type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise InputError(f"{what}: column {name} is {t}; latents are numbers")
    values = np.stack([table[c].to_numpy(zero_copy_only=False) for c in names], axis=1).astype(np.float64)
    bad = ~np.isfinite(values).all(axis=1)  # a missing (null) value reads as NaN
    if bad.any():
        raise InputError(f"{what} has NaN or infinite latents for {int(bad.sum())} objects: "
                         f"object_id {show_ids(ids[bad])}")
    huge = (np.abs(values) > LATENT_LIMIT).any(axis=1)
    if huge.any():
        raise InputError(f"{what} has latents beyond +-{LATENT_LIMIT:g} for {int(huge.sum())} objects: "
                         f"object_id {show_ids(ids[huge])} (a VAE latent is of order 1)")
    return Labels(ids, names, values.astype(np.float32), _redshift(table, ids, what))


def _redshift(table: pa.Table, ids: np.ndarray, what: str) -> np.ndarray | None:
    if REDSHIFT not in table.column_names:
        return None
    t = table[REDSHIFT].type
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        raise InputError(f"{what}: column {REDSHIFT} is {t}; a redshift is a number")
    z = table[REDSHIFT].to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~(np.isfinite(z) & (z >= Z_RANGE[0]) & (z <= Z_RANGE[1]))
    if bad.any():
        raise InputError(f"{what} has {int(bad.sum())} redshifts that are missing or outside "
                         f"[{Z_RANGE[0]}, {Z_RANGE[1]}]: object_id {show_ids(ids[bad])}")
    return z.astype(np.float32)
