"""Joins by ``object_id``: catalog rows with labels, a store's rows with a labels table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from galspec_batch.columns import (
    REDSHIFT,
    Z_PHOT,
    count_latents,
    latent_column,
    latent_names,
    latent_std_column,
    std_column,
)
from galspec_batch.errors import InputError
from galspec_batch.labels import show_ids


def catalog_latents(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Predicted means and spreads [N, L] of a catalog table (``latent_i``, ``latent_i_std``)."""
    n = count_latents(table.column_names, "catalog")
    stds = [latent_std_column(i) for i in range(1, n + 1)]
    missing = [c for c in stds if c not in table.column_names]
    if missing:
        raise InputError(f"catalog lacks columns {missing}; a galspec catalog has latent_i and latent_i_std")
    mean = np.stack([table[latent_column(i)].to_numpy(zero_copy_only=False) for i in range(1, n + 1)], axis=1)
    std = np.stack([table[latent_std_column(i)].to_numpy(zero_copy_only=False) for i in range(1, n + 1)],
                   axis=1)
    return mean.astype(np.float64), std.astype(np.float64)


def catalog_targets(table: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(target names as a checkpoint has them, means [N, T], spreads [N, T]) of a catalog table: its
    latents, then the redshift where it has ``z_phot``."""
    mean, std = catalog_latents(table)
    names = latent_names(mean.shape[1])
    if Z_PHOT in table.column_names:
        if std_column(Z_PHOT) not in table.column_names:
            raise InputError(f"catalog lacks column {std_column(Z_PHOT)!r}; a galspec catalog with {Z_PHOT} "
                             "has it")
        names.append(REDSHIFT)
        mean = np.column_stack([mean, table[Z_PHOT].to_numpy(zero_copy_only=False)])
        std = np.column_stack([std, table[std_column(Z_PHOT)].to_numpy(zero_copy_only=False)])
    return names, mean.astype(np.float64), std.astype(np.float64)


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
