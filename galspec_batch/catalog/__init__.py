"""The output catalog: a HATS-partitioned Parquet catalog of predicted latents, written one sky
partition at a time and resumable (format: catalogs/catalog-format.md)."""

from galspec_batch.catalog.reader import catalog_status, read_catalog, read_provenance
from galspec_batch.catalog.schema import (
    QualityFlag,
    catalog_schema,
    conform_table,
    latent_column,
    latent_std_column,
)
from galspec_batch.catalog.writer import CatalogWriter, mark_failed, write_partition

__all__ = [
    "CatalogWriter",
    "QualityFlag",
    "catalog_schema",
    "catalog_status",
    "conform_table",
    "latent_column",
    "latent_std_column",
    "mark_failed",
    "read_catalog",
    "read_provenance",
    "write_partition",
]
