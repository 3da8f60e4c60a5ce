"""What ``finalize`` publishes: the run's store partitions as a HATS collection, written with hats'
own writers (``write_parquet_metadata`` with per-partition statistics, ``PartitionInfo``,
``TableProperties``, the point map and ``write_skymap``, ``CollectionProperties``), in the layout
lsdb's ``to_collection`` writes: the primary catalog ``latents/``, its margin cache
``latents_<r>arcs/`` and ``collection.properties``.

The collection is built whole in ``_state/publishing`` and moved into place, with
``collection.properties`` written last, so a HATS reader finds a finished collection or none.
Every published file's size and sha256 go to ``_state/complete.json``, by which ``verify`` finds
damage and a rerun of ``predict`` (or ``finalize``) publishes it again from the run's own files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galspec_batch import __version__
from galspec_batch.atomic import file_sha256, read_json, write_json
from galspec_batch.catalog import paths
from galspec_batch.catalog.layout import margin_order, margin_pairs, margin_rows, merge_plan
from galspec_batch.catalog.state import DoneMarker, RunState
from galspec_batch.columns import DEC, HEALPIX, MODEL_ID, RA
from galspec_batch.describe import described_schema
from galspec_batch.errors import FormatError, first_line
from galspec_batch.options import Layout
from galspec_batch.sky import SPATIAL_INDEX_ORDER

POINT_MAP_MIN_ORDER = 8  # the point map (and so hats' MOC of the catalog) at order 8 or finer
ROW_GROUP_ROWS = 100_000
BUILDER = f"galspec-batch v{__version__}"


def publish(catalog: Path, markers: list[DoneMarker], schema: pa.Schema, run: RunState, layout: Layout,
            doc: dict) -> dict[str, list]:
    """Publish the finished run as a HATS collection with its provenance ``doc``; returns the
    manifest of its files (path relative to the collection: [bytes, sha256])."""
    staging = paths.staging_dir(catalog)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    schema = described_schema(schema, string_lengths={MODEL_ID: len(run.model_id or "")})
    order = run.partition_order
    groups = merge_plan({m.pixel: m.n_rows for m in markers}, order, layout.partition_rows)
    hist_order = max(POINT_MAP_MIN_ORDER, order)
    histogram = np.zeros(12 * 4**hist_order, np.int64)
    m_order = pairs = None
    if layout.margin_arcsec > 0:
        m_order = margin_order(layout.margin_arcsec, max(o for o, _ in groups))
        pairs = margin_pairs(list(groups), m_order)
    margins: dict[tuple[int, int], list[pa.Table]] = {}
    primary = staging / paths.PRIMARY_NAME
    counts = {}
    for (o, p), pixels in sorted(groups.items()):
        # nested pixels in ascending order, each file sorted by _healpix_29: the whole stays sorted
        table = pa.concat_tables([pq.read_table(paths.work_file(catalog, order, q)) for q in pixels])
        table = table.replace_schema_metadata(None).cast(schema)
        write_partition(primary / paths.DATASET_DIR / paths.partition_relpath(o, p), table, schema)
        counts[(o, p)] = table.num_rows
        hp = table[HEALPIX].to_numpy()
        histogram += np.bincount(hp >> (2 * (SPATIAL_INDEX_ORDER - hist_order)), minlength=len(histogram))
        if pairs is not None:
            for key, rows in margin_rows(table, hp, pairs, m_order).items():
                margins.setdefault(key, []).append(rows)
    finish_catalog(primary, paths.PRIMARY_NAME, schema, counts, histogram, hist_order, run=run,
                   catalog_type="object")
    names = [paths.PRIMARY_NAME]
    if pairs is not None:
        name = paths.margin_name(layout.margin_arcsec)
        margin_dir = staging / name
        margin_counts = {}
        for (o, p), parts in sorted(margins.items()):
            rows = pa.concat_tables(parts).sort_by([(HEALPIX, "ascending")])
            write_partition(margin_dir / paths.DATASET_DIR / paths.partition_relpath(o, p), rows, schema)
            margin_counts[(o, p)] = rows.num_rows
        finish_catalog(margin_dir, name, schema, margin_counts, None, None, run=run, catalog_type="margin",
                       primary_catalog=paths.PRIMARY_NAME, margin_threshold=layout.margin_arcsec)
        names.append(name)
    remove_published(catalog)
    for name in names:
        os.replace(staging / name, catalog / name)
    shutil.rmtree(staging, ignore_errors=True)
    write_json(catalog / paths.PROVENANCE_FILENAME, doc)
    write_collection_properties(catalog)  # last: now a reader finds the collection
    return record_files(catalog, [catalog / name for name in names])


def record_files(root: Path, dirs: list[Path]) -> dict[str, list]:
    """Size and sha256 of every file under ``dirs``, keyed by its path relative to ``root``."""
    return {str(f.relative_to(root)): [f.stat().st_size, file_sha256(f)]
            for d in dirs for f in sorted(d.rglob("*")) if f.is_file()}


def check_files(root: Path, records: dict[str, list], *, differs: str, stray: str, dirs: Sequence[Path] = (),
                only: list[str] | None = None, checksum: bool = True) -> list[str]:
    """One line for each file of ``records`` (default all; ``only`` these) that is missing or
    ``differs`` in size or sha256, and each file under ``dirs`` that ``records`` lacks (``stray``)."""
    problems = []
    for rel in only if only is not None else sorted(records):
        f = root / rel
        if rel not in records:
            problems.append(f"{f} {stray}")
        elif not f.is_file():
            problems.append(f"missing {f}")
        elif f.stat().st_size != records[rel][0] or (checksum and file_sha256(f) != records[rel][1]):
            problems.append(f"{f} {differs} (size or sha256)")
    problems += [f"{f} {stray}" for d in dirs for f in sorted(d.rglob("*"))
                 if f.is_file() and str(f.relative_to(root)) not in records]
    return problems


def write_collection_properties(catalog: Path) -> None:
    """``collection.properties``: the primary catalog, its margin cache and, once
    ``decode --write-back`` made it, the derived extension."""
    from hats.catalog.catalog_collection import CollectionProperties
    from hats.catalog.dataset.hats_properties import HatsProperties

    margins = sorted(d.name for d in catalog.glob(paths.MARGIN_GLOB) if d.is_dir())
    props = {"obs_collection": catalog.resolve().name, "hats_primary_table_url": paths.PRIMARY_NAME}
    if margins:
        props |= {"all_margins": margins, "default_margin": margins[0]}
    ext = paths.derived_properties_file(catalog)
    if ext.is_file():
        props["all_extensions"] = {paths.DERIVED_NAME: ext.name}
    props |= HatsProperties.new_provenance_dict(builder=BUILDER)
    tmp = paths.state_dir(catalog) / paths.PROPERTIES_STAGING_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    CollectionProperties(**props).to_properties_file(tmp)
    os.replace(tmp / paths.COLLECTION_PROPERTIES_FILENAME, catalog / paths.COLLECTION_PROPERTIES_FILENAME)
    shutil.rmtree(tmp, ignore_errors=True)


def remove_published(catalog: Path) -> None:
    """Take the published collection down (``collection.properties`` first, so that no reader
    finds a half-removed one); the run's own files and the derived extension stay."""
    (catalog / paths.COLLECTION_PROPERTIES_FILENAME).unlink(missing_ok=True)
    for d in [paths.primary_dir(catalog), *catalog.glob(paths.MARGIN_GLOB)]:
        shutil.rmtree(d, ignore_errors=True)


def check_published(catalog: Path, manifest: dict[str, list] | None, *, checksum: bool = True,
                    only: list[str] | None = None) -> list[str]:
    """What is wrong with the published collection, one line each: ``collection.properties``
    missing or not naming the primary and margin that were published, a file of ``manifest``
    (default: all; ``only`` these paths) missing or not the bytes that were published, and (when
    checking all) a file in the published catalogs that finalize did not write."""
    if manifest is None:
        return [f"{paths.complete_file(catalog)} does not list the published files"]
    dirs = [] if only is not None else [paths.primary_dir(catalog), *catalog.glob(paths.MARGIN_GLOB)]
    return _check_collection_properties(catalog, manifest) + check_files(
        catalog, manifest, differs="differs from what finalize published",
        stray="was not published by finalize; remove it", dirs=dirs, only=only, checksum=checksum)


def _check_collection_properties(catalog: Path, manifest: dict[str, list]) -> list[str]:
    from hats.catalog.catalog_collection import CollectionProperties

    f = catalog / paths.COLLECTION_PROPERTIES_FILENAME
    try:
        props = CollectionProperties.read_from_dir(catalog)
    except (OSError, ValueError) as exc:
        return [f"{f} is missing or unreadable ({first_line(exc)})"]
    margins = sorted({rel.split("/")[0] for rel in manifest} - {paths.PRIMARY_NAME})
    if props.hats_primary_table_url != paths.PRIMARY_NAME or sorted(props.all_margins or []) != margins:
        return [f"{f} does not name the published catalogs ({paths.PRIMARY_NAME}, margins {margins})"]
    return []


def read_manifest(catalog: Path) -> dict[str, list] | None:
    """The published files recorded in ``complete.json``; None when it has no such record."""
    try:
        files = read_json(paths.complete_file(catalog)).get("files")
    except (OSError, FormatError, AttributeError):
        return None
    return files if isinstance(files, dict) else None


def partition_info_relpath() -> str:
    """The primary's ``partition_info.csv``, relative to the collection (a manifest key)."""
    return f"{paths.PRIMARY_NAME}/{paths.PARTITION_INFO_FILENAME}"


def published_relpath(order: int, pixel: int) -> str:
    """A primary partition's path relative to the collection (a manifest key)."""
    return f"{paths.PRIMARY_NAME}/{paths.DATASET_DIR}/{paths.partition_relpath(order, pixel)}"


def published_pixels(catalog_dir: Path) -> list[tuple[int, int]]:
    """(order, pixel) of every partition of the HATS catalog ``catalog_dir`` (its ``partition_info.csv``)."""
    from hats.catalog import PartitionInfo

    f = catalog_dir / paths.PARTITION_INFO_FILENAME
    try:
        info = PartitionInfo.read_from_csv(f)
    except (OSError, ValueError) as exc:
        raise FormatError(f"cannot read {f} ({first_line(exc)})") from None
    return [(px.order, px.pixel) for px in info.get_healpix_pixels()]


def write_partition(target: Path, table: pa.Table, schema: pa.Schema) -> None:
    """One partition file, with the encodings and statistics hats writes."""
    from hats.io.file_io.file_io import get_parquet_write_table_kwargs

    target.parent.mkdir(parents=True, exist_ok=True)
    kwargs = get_parquet_write_table_kwargs(schema, write_table_kwargs={
        "row_group_size": ROW_GROUP_ROWS,
        "sorting_columns": [pq.SortingColumn(schema.get_field_index(HEALPIX))],
    })
    pq.write_table(table, target, **kwargs)


def finish_catalog(base: Path, name: str, schema: pa.Schema, counts: dict[tuple[int, int], int],
                   histogram: np.ndarray | None, hist_order: int | None, *, run: RunState | None,
                   **kind) -> None:
    """The catalog-level files of one HATS catalog whose partitions are written (``counts``: rows
    of each (order, pixel)): Parquet metadata with per-partition statistics,
    ``partition_info.csv``, with a ``histogram`` the point map and skymap, and
    ``hats.properties`` (galspec's keys from ``run``)."""
    import hats
    from hats.catalog import PartitionInfo, TableProperties
    from hats.catalog.dataset.hats_properties import HatsProperties
    from hats.io import paths as hats_paths
    from hats.io.file_io import write_fits_image
    from hats.io.skymap import write_skymap
    from hats.pixel_math import HealpixPixel

    base.mkdir(parents=True, exist_ok=True)
    pixels = sorted(counts)
    if pixels:
        hats.io.write_parquet_metadata(base, create_per_partition_stats=True)
    else:  # a margin with no rows: the schema alone
        (base / paths.DATASET_DIR).mkdir(parents=True, exist_ok=True)
        for f in (paths.PARQUET_METADATA_FILENAME, paths.PARQUET_COMMON_METADATA_FILENAME):
            pq.write_metadata(schema, base / paths.DATASET_DIR / f)
    info = PartitionInfo([HealpixPixel(o, p) for o, p in pixels])
    info.write_to_file(base / paths.PARTITION_INFO_FILENAME)
    extra = {}
    if histogram is not None:
        write_fits_image(histogram, hats_paths.get_point_map_file_pointer(base))
        write_skymap(histogram, base)
        extra["skymap_order"] = hist_order
    if run is not None:
        extra |= {"galspec_format_version": paths.FORMAT_VERSION, "galspec_model_id": run.model_id or "",
                  "galspec_store_fingerprint": run.store_fingerprint,
                  "galspec_provenance": f"../{paths.PROVENANCE_FILENAME}"}
    props = TableProperties(
        catalog_name=name, total_rows=sum(counts.values()), ra_column=RA, dec_column=DEC,
        healpix_column=HEALPIX, healpix_order=SPATIAL_INDEX_ORDER,
        hats_max_rows=max(counts.values(), default=0),
        hats_order=max((o for o, _ in pixels), default=0),
        moc_sky_fraction=float(f"{info.calculate_fractional_coverage():.5g}") if pixels else 0.0,
        obs_regime="Optical", obs_title="galspec-batch spectral latents predicted from grizy images",
        **kind, **extra, **HatsProperties.new_provenance_dict(base, builder=BUILDER),
    )
    props.to_properties_file(base)
