"""The catalog-level HATS files that ``finalize`` writes once every partition is done:
``dataset/_common_metadata``, ``dataset/_metadata``, ``partition_info.csv``, ``hats.properties``
and galspec's ``galspec-provenance.json``. Keys follow hats 0.11 (``TableProperties``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from galspec_batch import __version__
from galspec_batch.atomic import atomic_path
from galspec_batch.catalog import paths
from galspec_batch.catalog.state import DoneMarker, RunState
from galspec_batch.columns import DEC, HEALPIX, RA
from galspec_batch.errors import first_line
from galspec_batch.sky import SPATIAL_INDEX_ORDER

# The HATS spec release hats 0.11 stamps on the catalogs it writes (hats_release_date, hats_version).
HATS_RELEASE_DATE = "2025-08-22"
HATS_VERSION = "v1.0"


def write_all(catalog: Path, schema: pa.Schema, markers: list[DoneMarker], run: RunState, doc: dict) -> None:
    markers = sorted(markers, key=lambda m: (m.order, m.pixel))
    data = paths.dataset_dir(catalog)
    with atomic_path(data / paths.PARQUET_COMMON_METADATA_FILENAME, overwrite=True) as tmp:
        pq.write_metadata(schema, tmp)
    footers = []
    for m in markers:
        md = pq.read_metadata(paths.partition_file(catalog, m.order, m.pixel))
        md.set_file_path(paths.partition_relpath(m.order, m.pixel))
        footers.append(md)
    with atomic_path(data / paths.PARQUET_METADATA_FILENAME, overwrite=True) as tmp:
        pq.write_metadata(schema, tmp, metadata_collector=footers)
    _write_text(catalog / paths.PARTITION_INFO_FILENAME, _partition_info(markers))
    _write_text(catalog / paths.PROPERTIES_FILENAME, properties_text(catalog, markers, run, doc))
    _write_text(catalog / paths.PROVENANCE_FILENAME, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def remove_all(catalog: Path) -> None:
    """Remove the catalog-level files (before a repair: they would describe damaged partitions);
    ``hats.properties`` goes first, so a HATS reader never finds a half-described catalog."""
    data = paths.dataset_dir(catalog)
    for f in (catalog / paths.PROPERTIES_FILENAME, catalog / paths.PARTITION_INFO_FILENAME,
              data / paths.PARQUET_METADATA_FILENAME, data / paths.PARQUET_COMMON_METADATA_FILENAME,
              catalog / paths.PROVENANCE_FILENAME):
        f.unlink(missing_ok=True)


def check_all(catalog: Path, markers: list[DoneMarker]) -> list[str]:
    """What is wrong with the catalog-level files of a finished catalog, one line each: each must
    be there and describe exactly the partitions of ``markers`` (``_metadata`` every partition's
    row groups and rows)."""
    data = paths.dataset_dir(catalog)
    problems = []
    for f in (catalog / paths.PROPERTIES_FILENAME, catalog / paths.PROVENANCE_FILENAME):
        if not f.is_file():
            problems.append(f"missing {f}")
    want = {paths.partition_relpath(m.order, m.pixel): m.n_rows for m in markers}
    try:
        pq.read_schema(data / paths.PARQUET_COMMON_METADATA_FILENAME)
        md = pq.read_metadata(data / paths.PARQUET_METADATA_FILENAME)
        found: dict[str, int] = {}
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            found[rg.column(0).file_path] = found.get(rg.column(0).file_path, 0) + rg.num_rows
        if found != want:
            problems.append(f"{data / paths.PARQUET_METADATA_FILENAME} does not describe the partitions "
                            f"({len(found)} files, {sum(found.values())} rows; the catalog has "
                            f"{len(want)} and {sum(want.values())})")
    except (OSError, pa.ArrowException) as exc:
        problems.append(f"the Parquet metadata of {data} cannot be read ({first_line(exc)})")
    info = catalog / paths.PARTITION_INFO_FILENAME
    if not info.is_file() or info.read_text() != _partition_info(markers):
        problems.append(f"{info} is missing or does not list the partitions")
    return problems


def properties_text(catalog: Path, markers: list[DoneMarker], run: RunState, doc: dict) -> str:
    """``hats.properties`` (Java properties, one ``key=value`` a line)."""
    order = run.partition_order
    props = {
        "obs_collection": catalog.resolve().name,
        "dataproduct_type": "object",
        "hats_nrows": sum(m.n_rows for m in markers),
        "hats_col_ra": RA,
        "hats_col_dec": DEC,
        "hats_col_healpix": HEALPIX,
        "hats_col_healpix_order": SPATIAL_INDEX_ORDER,
        "hats_npix_suffix": paths.PARQUET_SUFFIX,
        "hats_max_rows": max(m.n_rows for m in markers),
        "hats_order": order,
        "moc_sky_fraction": f"{len(markers) / (12 * 4**order):.8f}",
        "hats_builder": f"galspec-batch v{__version__}",
        "hats_creation_date": doc["finalized"],
        "hats_estsize": _estsize_kb(catalog, markers),
        "hats_release_date": HATS_RELEASE_DATE,
        "hats_version": HATS_VERSION,
        "obs_regime": "Optical",
        "obs_title": "galspec-batch spectral latents predicted from grizy images",
        "galspec_format_version": paths.FORMAT_VERSION,
        "galspec_model_id": run.model_id or "",
        "galspec_store_fingerprint": run.store_fingerprint,
        "galspec_provenance": paths.PROVENANCE_FILENAME,
    }
    lines = [f"{k}={_value(v)}" for k, v in props.items()]
    return "#HATS catalog written by galspec-batch\n" + "\n".join(lines) + "\n"


def _partition_info(markers: list[DoneMarker]) -> str:
    """``partition_info.csv``: a header, then ``order,pixel`` of every partition, sorted."""
    rows = sorted((m.order, m.pixel) for m in markers)
    return f"{paths.PARTITION_ORDER},{paths.PARTITION_PIXEL}\n" + "".join(f"{o},{p}\n" for o, p in rows)


def _value(v: object) -> str:
    # Java properties: one line per value, and a backslash starts an escape.
    return str(v).replace("\\", "\\\\").replace("\n", " ")


def _estsize_kb(catalog: Path, markers: list[DoneMarker]) -> int:
    return int(sum(os.path.getsize(paths.partition_file(catalog, m.order, m.pixel)) for m in markers) / 1024)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)
