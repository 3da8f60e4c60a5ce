"""The output catalog: a HATS-partitioned Parquet catalog of predicted latents, written one sky
partition at a time and resumable (format: catalogs/catalog-format.md)."""

from galspec_batch.catalog.reader import calibration_values, read_calibration, read_catalog, read_provenance
from galspec_batch.catalog.schema import Outputs, catalog_schema, conform_table
from galspec_batch.catalog.status import CatalogStatus, catalog_status, verify_catalog
from galspec_batch.catalog.writer import CatalogWriter, mark_failed, write_partition

__all__ = [
    "CatalogStatus",
    "CatalogWriter",
    "Outputs",
    "catalog_schema",
    "catalog_status",
    "conform_table",
    "mark_failed",
    "read_catalog",
    "read_provenance",
    "read_calibration",
    "calibration_values",
    "verify_catalog",
    "write_partition",
]
