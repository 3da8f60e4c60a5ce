"""Every on-disk name of a galspec catalog, in one place (layout in catalogs/catalog-format.md).

The public part is a HATS collection (``collection.properties``; the primary catalog ``latents/``
with ``hats.properties``, ``partition_info.csv``, ``dataset/Norder=k/Dir=d/Npix=p.parquet``;
its margin cache ``latents_<r>arcs/``; the extension ``derived/``). The run's own files, one
Parquet file per store partition, live in ``_state/``, which HATS readers never look at.
"""

from __future__ import annotations

from pathlib import Path

FORMAT_NAME = "galspec-catalog"
FORMAT_VERSION = 4

# HATS (hats >= 0.11 layout, "v1.0" of the IVOA note)
COLLECTION_PROPERTIES_FILENAME = "collection.properties"
PRIMARY_NAME = "latents"  # the primary catalog of the collection
DERIVED_NAME = "derived"  # the extension of derived columns (`galspec decode --write-back`)
EXTENSION_SUFFIX = ".properties"  # <extension>.properties at the collection root
PROPERTIES_FILENAME = "hats.properties"
PARTITION_INFO_FILENAME = "partition_info.csv"
DATASET_DIR = "dataset"
PARQUET_METADATA_FILENAME = "_metadata"
PARQUET_COMMON_METADATA_FILENAME = "_common_metadata"
PARTITION_ORDER = "Norder"
PARTITION_DIR = "Dir"
PARTITION_PIXEL = "Npix"
PARQUET_SUFFIX = ".parquet"
DIR_STEP = 10_000

# galspec's own files
PROVENANCE_FILENAME = "galspec-provenance.json"
PARTS_DIR = "parts"  # in _state/: the run's Parquet file of each store partition (unit of work and resume)
STAGING_DIR = "publishing"  # in _state/: the collection being built by finalize, moved into place whole
EXTENSION_STAGING_DIR = "publishing-derived"  # in _state/: the derived extension being built
PROPERTIES_STAGING_DIR = "publishing-properties"  # in _state/: collection.properties being written
SCHEMA_METADATA_KEY = b"galspec"
STATE_DIR = "_state"
RUN_STATE_FILENAME = "run.json"
SCHEMA_FILENAME = "schema.parquet"
DONE_DIR = "done"
FAILED_DIR = "failed"
COMPLETE_FILENAME = "complete.json"
LOCK_FILENAME = "lock"

# a SLURM submission's record (galspec_batch.hpc); HATS readers never look in "_slurm"
SUBMIT_DIR = "_slurm"
SUBMISSION_PLAN_FILENAME = "plan.json"
SUBMISSION_DIR_PREFIX = "submit-"
TASKS_FILENAME = "tasks.json"
LOG_DIR = "logs"

DASK_LOG_SUFFIX = ".dask-logs"  # beside the catalog: workers of `submit --mode dask` log there
DERIVED_MARKER_FILENAME = "derived.json"  # in _state/: the derived extension's files, sizes and sha256


MARGIN_GLOB = f"{PRIMARY_NAME}_*arcs"  # every margin_name
WORK_GLOB = "o*/d*/p*.parquet"  # every work_file, under _state/parts


def margin_name(arcsec: float) -> str:
    """The margin cache's directory (lsdb's convention): ``latents_10arcs``."""
    return f"{PRIMARY_NAME}_{arcsec:g}arcs"


def derived_properties_file(catalog: str | Path) -> Path:
    """``derived.properties``: hats' description of the derived extension."""
    return Path(catalog) / f"{DERIVED_NAME}{EXTENSION_SUFFIX}"


def primary_dir(catalog: str | Path) -> Path:
    """The primary HATS catalog of the collection ``catalog``."""
    return Path(catalog) / PRIMARY_NAME


def partition_dir_number(pixel: int) -> int:
    """HATS' ``Dir=`` of a pixel (and the work files' ``d``): ``Npix // 10000 * 10000``."""
    return (int(pixel) // DIR_STEP) * DIR_STEP


def partition_relpath(order: int, pixel: int) -> str:
    """``Norder=k/Dir=d/Npix=p.parquet``, relative to the dataset directory."""
    return (
        f"{PARTITION_ORDER}={int(order)}/{PARTITION_DIR}={partition_dir_number(pixel)}/"
        f"{PARTITION_PIXEL}={int(pixel)}{PARQUET_SUFFIX}"
    )


def work_file(catalog: str | Path, order: int, pixel: int) -> Path:
    """The run's Parquet file of one store partition (what a done marker vouches for)."""
    folder = state_dir(catalog) / PARTS_DIR / f"o{int(order)}" / f"d{partition_dir_number(pixel)}"
    return folder / f"p{int(pixel)}{PARQUET_SUFFIX}"


def parse_work_file(path: Path) -> tuple[int, int]:
    """(order, pixel) of a file named by ``work_file``; ValueError for any other name."""
    pixel = path.name.removeprefix("p").removesuffix(PARQUET_SUFFIX)
    return int(path.parent.parent.name.removeprefix("o")), int(pixel)


def staging_dir(catalog: str | Path) -> Path:
    """Where finalize builds the collection before moving it into place."""
    return state_dir(catalog) / STAGING_DIR


def state_dir(catalog: str | Path) -> Path:
    return Path(catalog) / STATE_DIR


def run_state_file(catalog: str | Path) -> Path:
    return state_dir(catalog) / RUN_STATE_FILENAME


def schema_file(catalog: str | Path) -> Path:
    return state_dir(catalog) / SCHEMA_FILENAME


def complete_file(catalog: str | Path) -> Path:
    return state_dir(catalog) / COMPLETE_FILENAME


def submit_dir(catalog: str | Path) -> Path:
    return Path(catalog) / SUBMIT_DIR


def submission_plan_file(catalog: str | Path) -> Path:
    return submit_dir(catalog) / SUBMISSION_PLAN_FILENAME


def submission_dir(catalog: str | Path, number: int) -> Path:
    return submit_dir(catalog) / f"{SUBMISSION_DIR_PREFIX}{int(number)}"


def tasks_file(catalog: str | Path, number: int) -> Path:
    return submission_dir(catalog, number) / TASKS_FILENAME


def log_dir(catalog: str | Path) -> Path:
    return submit_dir(catalog) / LOG_DIR


def derived_dir(catalog: str | Path) -> Path:
    """The derived-quantity extension, a HATS catalog (``galspec decode --write-back``)."""
    return Path(catalog) / DERIVED_NAME


def dask_log_dir(catalog: str | Path) -> Path:
    catalog = Path(catalog).resolve()
    return catalog.parent / f"{catalog.name}{DASK_LOG_SUFFIX}"


def derived_marker(catalog: str | Path) -> Path:
    return state_dir(catalog) / DERIVED_MARKER_FILENAME


def lock_file(catalog: str | Path) -> Path:
    return state_dir(catalog) / LOCK_FILENAME


def _marker_name(order: int, pixel: int) -> str:
    # Not "Norder=.../Npix=...": HATS validators glob for those names anywhere under the catalog.
    return f"o{int(order)}_p{int(pixel)}.json"


def done_marker(catalog: str | Path, order: int, pixel: int) -> Path:
    return state_dir(catalog) / DONE_DIR / _marker_name(order, pixel)


def failed_marker(catalog: str | Path, order: int, pixel: int) -> Path:
    return state_dir(catalog) / FAILED_DIR / _marker_name(order, pixel)


MARKER_GLOB = "o*_p*.json"  # every name _marker_name makes


def parse_marker_name(name: str) -> tuple[int, int]:
    """(order, pixel) of a marker file name made by ``done_marker``/``failed_marker``."""
    o, p = name.removesuffix(".json").split("_")
    return int(o[1:]), int(p[1:])
