"""The derived-quantity extension of a catalog (``galspec decode --write-back``): a HATS catalog
``derived/`` partitioned as the primary catalog was when it was written, with ``object_id``, the
position and the derived columns, described by ``derived.properties`` (hats'
``ExtensionProperties``) and listed in ``collection.properties``, so that lsdb joins it with
``Catalog.load_extension("derived")``.

It is rewritten whole at each write-back (built in ``_state``, the old one moved aside until the
new one is in place); its files' sizes and sha256 go to ``_state/derived.json``, by which a
damaged extension, or a file added to it, is found.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from galspec_batch.atomic import read_json, write_json
from galspec_batch.catalog import paths, publish
from galspec_batch.catalog.reader import catalog_pixels, read_catalog
from galspec_batch.columns import DEC, HEALPIX, OBJECT_ID, RA
from galspec_batch.describe import described_schema
from galspec_batch.errors import FormatError, InputError
from galspec_batch.sky import SPATIAL_INDEX_ORDER

POSITION = [OBJECT_ID, RA, DEC, HEALPIX]


def write_extension(catalog: Path, table: pa.Table, metadata: dict[bytes, bytes]) -> Path:
    """Publish ``table`` (``object_id`` and derived columns, one row per object of the catalog at
    most) as the derived extension, replacing the one there; ``metadata`` goes into its schema."""
    from hats.catalog.dataset.extension_properties import ExtensionProperties

    columns = [c for c in table.column_names if c != OBJECT_ID]
    ids = table[OBJECT_ID].to_numpy()
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"derived columns for {catalog}: object_id {int(uniq[counts > 1][0])} appears twice")
    where = read_catalog(catalog, POSITION)
    unknown = ~np.isin(ids, where[OBJECT_ID].to_numpy())
    if unknown.any():
        raise InputError(f"derived columns for {catalog}: {int(unknown.sum())} object ids are not in the "
                         f"catalog, e.g. {int(ids[unknown][0])}")
    table = where.join(table, OBJECT_ID, join_type="inner").sort_by([(HEALPIX, "ascending")])
    table = table.select(POSITION + columns)
    schema = described_schema(table.schema)
    schema = schema.with_metadata({**schema.metadata, **metadata})
    table = table.cast(schema)
    staging = paths.state_dir(catalog) / paths.EXTENSION_STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    base = staging / paths.DERIVED_NAME
    hp = table[HEALPIX].to_numpy()
    counts = {}
    for o, p in catalog_pixels(catalog):  # partitioned as the primary is now
        rows = table.filter(pa.array((hp >> (2 * (SPATIAL_INDEX_ORDER - o))) == p))
        if rows.num_rows:
            publish.write_partition(base / paths.DATASET_DIR / paths.partition_relpath(o, p), rows, schema)
            counts[(o, p)] = rows.num_rows
    publish.finish_catalog(base, paths.DERIVED_NAME, schema, counts, None, None, run=None,
                           catalog_type="object")
    # the old extension is moved aside, not deleted, until the new one is in place
    paths.derived_properties_file(catalog).unlink(missing_ok=True)
    old = staging / "old"
    if paths.derived_dir(catalog).exists():
        os.replace(paths.derived_dir(catalog), old)
    os.replace(base, paths.derived_dir(catalog))
    files = publish.record_files(catalog, [paths.derived_dir(catalog)])
    write_json(paths.derived_marker(catalog), {"files": files})
    ExtensionProperties(
        name=paths.DERIVED_NAME, primary_catalog=Path(catalog).resolve().name, primary_column=OBJECT_ID,
        join_catalog=paths.DERIVED_NAME, join_column=OBJECT_ID, extension_columns=columns,
        extension_join_style="left", shares_primary_coordinates=True,
    ).to_properties_file(catalog)
    publish.write_collection_properties(catalog)
    shutil.rmtree(staging, ignore_errors=True)
    return paths.derived_dir(catalog)


def remove_extension(catalog: Path) -> None:
    """Take the extension down (its properties file first) and out of ``collection.properties``."""
    paths.derived_properties_file(catalog).unlink(missing_ok=True)
    paths.derived_marker(catalog).unlink(missing_ok=True)
    shutil.rmtree(paths.derived_dir(catalog), ignore_errors=True)
    if (Path(catalog) / paths.COLLECTION_PROPERTIES_FILENAME).exists():
        publish.write_collection_properties(Path(catalog))


def has_extension(catalog: str | Path) -> bool:
    """Whether the catalog has (or had, in part) a derived extension."""
    return any(f.exists() for f in (paths.derived_dir(catalog), paths.derived_properties_file(catalog),
                                    paths.derived_marker(catalog)))


def _recorded_files(catalog: Path) -> dict[str, list] | None:
    try:
        files = read_json(paths.derived_marker(catalog))["files"]
    except (OSError, FormatError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def check_extension(catalog: str | Path) -> str | None:
    """Why the derived extension cannot be trusted, or None when there is none or it is whole:
    its record, properties file and every file as recorded, and no file the record lacks."""
    catalog = Path(catalog)
    if not has_extension(catalog):
        return None
    files = _recorded_files(catalog)
    if files is None:
        return f"{paths.derived_dir(catalog)} has no record of being written whole"
    if not paths.derived_properties_file(catalog).is_file():
        return f"{paths.derived_properties_file(catalog)} is missing"
    problems = publish.check_files(catalog, files, differs="differs from the record of its writing",
                                   stray="is not part of the extension as it was written",
                                   dirs=[paths.derived_dir(catalog)])
    return problems[0] if problems else None


def extension_files(catalog: str | Path) -> list[Path]:
    """The extension's partition files, as recorded when it was written (none without one)."""
    files = _recorded_files(Path(catalog)) or {}
    part = f"/{paths.DATASET_DIR}/{paths.PARTITION_ORDER}="
    return [Path(catalog) / rel for rel in sorted(files)
            if part in rel and rel.endswith(paths.PARQUET_SUFFIX)]


def read_extension(catalog: str | Path) -> pa.Table | None:
    """The extension's rows (object_id and derived columns), or None when there is none."""
    files = extension_files(catalog)
    if not files:
        return None
    t = pa.concat_tables([pq.read_table(f) for f in files])
    return t.drop_columns([c for c in (RA, DEC, HEALPIX) if c in t.column_names])


def merge_rows(old: pa.Table | None, new: pa.Table) -> pa.Table:
    """``new`` with the rows of ``old`` whose object is not in ``new`` (new rows win), by object_id."""
    if old is not None:
        keep = pc.invert(pc.is_in(old[OBJECT_ID], value_set=new[OBJECT_ID]))
        new = pa.concat_tables([old.select(new.column_names).filter(keep), new])
    return new.take(pa.array(np.argsort(new[OBJECT_ID].to_numpy(), kind="stable")))
