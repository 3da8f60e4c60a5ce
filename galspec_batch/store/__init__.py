"""The cutout store: a versioned Zarr v3 group of multi-band cutouts sorted by sky position
(format: catalogs/store-format.md)."""

from galspec_batch.store.format import DEFAULT_BANDS, FORMAT_VERSION, StoreAttrs
from galspec_batch.store.reader import Batch, CutoutStore, Partition, open_store
from galspec_batch.store.writer import StoreWriter, append_objects, create_store

__all__ = [
    "DEFAULT_BANDS",
    "FORMAT_VERSION",
    "Batch",
    "CutoutStore",
    "Partition",
    "StoreAttrs",
    "StoreWriter",
    "append_objects",
    "create_store",
    "open_store",
]
