"""Every on-disk name of a galspec catalog, in one place (layout in catalogs/catalog-format.md).

The public part is the HATS layout (``hats.properties``, ``partition_info.csv``,
``dataset/Norder=k/Dir=d/Npix=p.parquet``, ``dataset/_metadata``); the run state lives in
``_state/``, which HATS readers never look at.
"""

from __future__ import annotations

from pathlib import Path

FORMAT_NAME = "galspec-catalog"
FORMAT_VERSION = 3

# HATS (hats >= 0.5 layout, "v1.0" of the IVOA note)
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

# derived quantities written back by `galspec decode --write-back`
DASK_LOG_SUFFIX = ".dask-logs"  # beside the catalog: workers of `submit --mode dask` log there
DERIVED_DIR = "derived"
DERIVED_FILENAME = "derived.parquet"
DERIVED_MARKER_FILENAME = "derived.json"  # in _state/: the sidecar's size and sha256


def dataset_dir(catalog: str | Path) -> Path:
    return Path(catalog) / DATASET_DIR


def partition_dir_number(pixel: int) -> int:
    return (int(pixel) // DIR_STEP) * DIR_STEP


def partition_relpath(order: int, pixel: int) -> str:
    """``Norder=k/Dir=d/Npix=p.parquet``, relative to the dataset directory."""
    return (
        f"{PARTITION_ORDER}={int(order)}/{PARTITION_DIR}={partition_dir_number(pixel)}/"
        f"{PARTITION_PIXEL}={int(pixel)}{PARQUET_SUFFIX}"
    )


def partition_file(catalog: str | Path, order: int, pixel: int) -> Path:
    return dataset_dir(catalog) / partition_relpath(order, pixel)


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


def derived_file(catalog: str | Path) -> Path:
    """The derived-quantity sidecar (``galspec decode --write-back``)."""
    return Path(catalog) / DERIVED_DIR / DERIVED_FILENAME


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
