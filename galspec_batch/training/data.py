"""Training data: a cutout store joined to a labels table by ``object_id``, split and batched.

A labels table is Parquet with ``object_id`` (int64) and latent columns ``latent_1..latent_N``
(float). Images of the matched objects are held in RAM (in the store's dtype) when they fit, else
read from the store batch by batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch

from galspec_batch.errors import InputError, UsageError
from galspec_batch.ingest.quarantine import read_quarantine
from galspec_batch.labels import Labels, read_labels
from galspec_batch.store import CutoutStore

DEFAULT_MAX_RAM_BYTES = 4 << 30
READ_BLOCK = 1024


def read_training_labels(path: str | os.PathLike) -> Labels:
    """Read and check a labels table for training (see ``galspec_batch.labels``): at least 2 rows."""
    labels = read_labels(path)
    if labels.object_id.size < 2:
        raise InputError(f"labels table {path} has {labels.object_id.size} rows; training needs at least 2")
    return labels


def leave_out_quarantined(labels: Labels, store: CutoutStore) -> tuple[Labels, np.ndarray]:
    """``labels`` less the objects the store lacks because its ingest or download quarantined them
    (``<store>.quarantine.csv``), and those objects' ids. A labelled object the store lacks for no
    recorded reason stays, for the join to refuse by name."""
    listed = [q.object_id for q in read_quarantine(store.path) if q.object_id is not None]
    drop = np.isin(labels.object_id, listed) & ~np.isin(labels.object_id, store.object_id)
    keep = ~drop
    z = None if labels.z is None else labels.z[keep]
    return replace(labels, object_id=labels.object_id[keep], values=labels.values[keep], z=z), \
        labels.object_id[drop]


def split_indices(object_id: np.ndarray, val_fraction: float = 0.2, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-seed random split into (train, validation) indices, defined on the sorted ids so it
    does not depend on the order of the rows."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    n = len(object_id)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise InputError(f"{n} labelled objects are too few for a {val_fraction:.0%} validation split")
    by_id = np.argsort(object_id, kind="stable")
    perm = by_id[np.random.default_rng(seed).permutation(n)]
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class ImageSource:
    """Images of given store rows, fetched by position: in RAM when they fit, else from the store."""

    def __init__(self, store: CutoutStore, rows: np.ndarray, max_ram_bytes: int = DEFAULT_MAX_RAM_BYTES,
                 progress=None) -> None:
        self.store, self.rows = store, np.asarray(rows, np.int64)
        nb, (h, w) = len(store.bands), store.image_shape
        dtype = np.dtype(store.attrs.dtype)
        self.in_memory = self.rows.size * nb * h * w * dtype.itemsize <= max_ram_bytes
        self._images: np.ndarray | None = None
        if self.in_memory:
            self._images = np.empty((self.rows.size, nb, h, w), dtype)
            order = np.argsort(self.rows, kind="stable")
            for a in range(0, order.size, READ_BLOCK):
                pos = order[a:a + READ_BLOCK]
                self._images[pos] = store.read(self.rows[pos]).images.astype(dtype)
                if progress is not None:
                    progress(pos.size)

    def __len__(self) -> int:
        return self.rows.size

    def get(self, pos: np.ndarray) -> np.ndarray:
        """float32 images [n, B, H, W] at positions ``pos`` (NaN kept)."""
        if self._images is not None:
            # torch converts float16 with vector instructions, several times faster than numpy's astype
            return torch.from_numpy(self._images[pos]).float().numpy()
        order = np.argsort(self.rows[pos], kind="stable")
        out = np.empty((len(pos), len(self.store.bands), *self.store.image_shape), np.float32)
        out[order] = self.store.read(self.rows[pos][order]).images
        return out

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` images picked at random (for fitting the preprocessing)."""
        pick = np.random.default_rng(seed).permutation(len(self))[:n]
        return self.get(np.sort(pick))


def n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)


def iter_batches(source: ImageSource, targets: np.ndarray, batch_size: int,
                 generator: torch.Generator | None = None, drop_last: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, targets) batches over ``source``, shuffled when a generator is given. With
    ``drop_last`` (training, as fastai) an incomplete last batch is skipped when there is a full one."""
    n = len(source)
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    for a in range(0, n_batches(n, batch_size, drop_last) * batch_size, batch_size):
        pos = order[a:a + batch_size]
        yield torch.from_numpy(source.get(pos)), torch.from_numpy(targets[pos])
