"""Read a catalog without lsdb: its provenance and its rows as an Arrow table. A galspec catalog
is read only when finished, each published file first checked against what finalize published;
any other HATS catalog or collection (hats-import, ``lsdb ... to_hats``) is read as it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds

from galspec_batch.atomic import read_json
from galspec_batch.catalog import paths, publish
from galspec_batch.errors import FormatError, IncompleteOutputError, InputError, MissingFileError, first_line


def read_provenance(path: str | Path) -> dict:
    """The provenance document of a finished catalog (``galspec-provenance.json``)."""
    f = Path(path) / paths.PROVENANCE_FILENAME
    if not f.exists():
        _require_complete(Path(path))
        raise MissingFileError(f"catalog {path} has no {paths.PROVENANCE_FILENAME}")
    return read_json(f)


def read_calibration(path: str | Path) -> dict | None:
    """The calibration a finished catalog was predicted with (``Calibration.record()``: targets,
    scale, nu, ...), or None for a catalog of the network's own spreads (or not galspec's)."""
    if not is_galspec(path):
        hats_catalog_dir(path)
        return None
    doc = read_provenance(path)
    return doc.get("provenance", doc).get("calibration") or None


def calibration_values(record: dict, key: str, targets: list[str]) -> np.ndarray:
    """One per-target field of a calibration record (``scale``, ``nu``) for ``targets``, in their order."""
    return np.array([record[key][record["targets"].index(t)] for t in targets], np.float64)


def read_catalog(
    path: str | Path, columns: list[str] | None = None, filter: pds.Expression | None = None,
    *, needed_by: str | None = None,
) -> pa.Table:
    """Rows of a finished catalog (or any HATS catalog) as one Arrow table, e.g.
    ``read_catalog(p, ["object_id", "latent_1"], pds.field("quality_flags") == 0)``. A column
    the catalog lacks is refused by name (``needed_by`` says what needs it)."""
    files = partition_files(Path(path))
    dataset = pds.dataset([str(f) for f in files], format="parquet")
    missing = [c for c in columns or () if c not in dataset.schema.names]
    if missing:
        why = f" ({needed_by} needs {'it' if len(missing) == 1 else 'them'})" if needed_by else ""
        raise InputError(f"catalog {path} has no column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)}{why}; it has {', '.join(dataset.schema.names)}")
    return dataset.to_table(columns=columns, filter=filter)


def is_galspec(path: str | Path) -> bool:
    """Whether ``path`` is a catalog galspec writes (it has galspec's run state)."""
    return paths.run_state_file(path).exists()


def hats_catalog_dir(path: str | Path) -> Path:
    """The HATS catalog of objects of ``path``: a galspec catalog's primary (``latents/``, whatever
    ``collection.properties`` says), another collection's primary, or ``path`` itself. A catalog
    inside a galspec collection (its primary, margin or extension) is refused: galspec checks its
    files only through the collection."""
    from hats.catalog import TableProperties
    from hats.catalog.catalog_collection import CollectionProperties

    path = Path(path)
    if is_galspec(path):
        _require_complete(path)
        return paths.primary_dir(path)
    if is_galspec(path.resolve().parent):
        raise InputError(f"{path} is part of the galspec catalog {path.resolve().parent}; open that "
                         "directory instead (galspec checks its files only through it)")
    if (path / paths.COLLECTION_PROPERTIES_FILENAME).is_file():
        try:
            path = path / CollectionProperties.read_from_dir(path).hats_primary_table_url
        except ValueError as exc:
            f = path / paths.COLLECTION_PROPERTIES_FILENAME
            raise FormatError(f"{f} is not valid ({first_line(exc)})") from None
    if not (path / paths.PROPERTIES_FILENAME).is_file():
        raise MissingFileError(f"{path} is not a HATS catalog: it has no "
                               f"{paths.COLLECTION_PROPERTIES_FILENAME} or {paths.PROPERTIES_FILENAME}")
    kind = TableProperties.read_from_dir(path).catalog_type
    if kind not in ("object", "source"):
        raise InputError(f"{path} is a HATS {kind} catalog, not a catalog of objects")
    return path


def catalog_pixels(path: str | Path) -> list[tuple[int, int]]:
    """(order, pixel) of every partition of a finished catalog (its ``partition_info.csv``, of a
    galspec catalog checked against what finalize published), or of any HATS catalog."""
    path = Path(path)
    if is_galspec(path):
        require_whole(path, partitions=[])
    return publish.published_pixels(hats_catalog_dir(path))


def partition_files(path: Path, pixels: list[tuple[int, int]] | None = None) -> list[Path]:
    """The partition files of ``pixels`` (default: all) of a finished catalog, each of a galspec
    catalog first checked against what finalize published (with all of them, every published
    file); or of any HATS catalog."""
    if is_galspec(path):  # all of it (partition_info.csv too), or just the files of these pixels
        require_whole(path, partitions=pixels)
    catalog_dir = hats_catalog_dir(path)
    pixels = publish.published_pixels(catalog_dir) if pixels is None else pixels
    return [catalog_dir / paths.DATASET_DIR / paths.partition_relpath(o, p) for o, p in pixels]


def _require_complete(path: Path) -> None:
    if not paths.run_state_file(path).exists():
        raise MissingFileError(f"{path} is not a galspec catalog: {paths.run_state_file(path)} is missing")
    if not paths.complete_file(path).exists():
        raise IncompleteOutputError(
            f"catalog {path} is not finished (no {paths.complete_file(path)}); "
            "rerun `galspec predict` with the same settings to finish it"
        )


def require_whole(path: Path, partitions: list[tuple[int, int]] | None = None) -> None:
    """Refuse to read a catalog that is not finished, or whose published files (default: all;
    else ``partition_info.csv`` and the primary ``partitions``, as (order, pixel)) differ from
    what finalize published (size and sha256): every row served is a row written."""
    _require_complete(path)
    manifest = publish.read_manifest(path)
    only = None if partitions is None or manifest is None else [publish.partition_info_relpath()] + [
        publish.published_relpath(o, p) for o, p in partitions]
    problems = publish.check_published(path, manifest, only=only)
    if problems:
        raise IncompleteOutputError(f"catalog {path}: {problems[0]}; rerun `galspec predict` with the "
                                    "same settings to publish it again (`galspec verify` lists all)")
