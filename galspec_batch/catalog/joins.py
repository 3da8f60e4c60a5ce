"""Joins by ``object_id``: catalog rows with labels, a store's rows with a labels table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from galspec_batch.columns import count_latents, latent_column, latent_std_column
from galspec_batch.errors import InputError
from galspec_batch.labels import show_ids


def catalog_latents(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Predicted means and spreads [N, L] of a catalog table (``latent_i``, ``latent_i_std``)."""
    n = count_latents(table.column_names, "catalog")
    stds = [latent_std_column(i) for i in range(1, n + 1)]
    missing = [c for c in stds if c not in table.column_names]
    if missing:
        raise InputError(f"catalog lacks columns {missing}; a galspec catalog has latent_i and latent_i_std")
    mean = np.stack([table[latent_column(i)].to_numpy() for i in range(1, n + 1)], axis=1)
    std = np.stack([table[latent_std_column(i)].to_numpy() for i in range(1, n + 1)], axis=1)
    return mean.astype(np.float64), std.astype(np.float64)


def match_ids(reference: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each of ``ids`` in the unique ``reference`` ids, -1 where absent."""
    reference, ids = np.asarray(reference, np.int64), np.asarray(ids, np.int64)
    if len(reference) == 0:
        return np.full(len(ids), -1, np.int64)
    order = np.argsort(reference, kind="stable")
    pos = np.clip(np.searchsorted(reference[order], ids), 0, len(reference) - 1)
    return np.where(reference[order][pos] == ids, order[pos], -1).astype(np.int64)


def match_rows(reference: np.ndarray, ids: np.ndarray, where: str) -> np.ndarray:
    """Rows of ``ids`` in ``reference`` (e.g. a store's object ids); every id must be there."""
    rows = match_ids(reference, ids)
    if (rows < 0).any():
        raise InputError(f"{int((rows < 0).sum())} labelled objects are not in {where}: "
                         f"object_id {show_ids(np.asarray(ids)[rows < 0])}")
    return rows
