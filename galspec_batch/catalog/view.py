"""A locked-down DuckDB view of one finished catalog, for queries from users.

The catalog's partition files (and its derived extension) are opened first; then the connection is
closed to the file system (``enable_external_access=false``, reads limited to the catalog's own
directories) and its configuration locked, so that a user's expression cannot read or write
other files. The view ``catalog`` holds the partitions (pruned to a region), LEFT JOINed on
``object_id`` with the derived extension (``galspec decode --write-back``).
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats
from scipy.special import ndtr

from galspec_batch.catalog.extension import check_extension, extension_files
from galspec_batch.catalog.reader import catalog_pixels, is_galspec, partition_files, read_calibration
from galspec_batch.columns import DEC, HEALPIX, LATENT_RE, OBJECT_ID, RA, catalog_column, std_column
from galspec_batch.errors import (
    IncompleteOutputError,
    InputError,
    UsageError,
    did_you_mean,
    first_line,
)
from galspec_batch.regions import Region, parse_region

VIEW = "catalog"


def normal_cdf_arrow(x: pa.Array) -> pa.Array:
    """Phi(x) for DuckDB (a vectorised Arrow UDF); NULL and NaN give NULL."""
    v = ndtr(x.to_numpy(zero_copy_only=False).astype(np.float64))
    return pa.array(v, mask=np.isnan(v))


def t_cdf_arrow(x: pa.Array, nu: pa.Array) -> pa.Array:
    """The Student-t CDF with ``nu`` dof for DuckDB (a vectorised Arrow UDF); NULL gives NULL."""
    v = stats.t.cdf(x.to_numpy(zero_copy_only=False).astype(np.float64),
                    nu.to_numpy(zero_copy_only=False).astype(np.float64))
    return pa.array(v, mask=np.isnan(v))


def _partition_files(catalog: Path, region: Region | None) -> list[Path]:
    """The catalog's partition files, pruned to the region's pixels (a galspec catalog's each
    checked against what finalize published)."""
    pixels = catalog_pixels(catalog)
    if not pixels:
        raise InputError(f"catalog {catalog} has no partitions")
    if region is not None:
        keep = {(o, int(p)) for o in {o for o, _ in pixels} for p in region.pixels(o)}
        n_all, pixels = len(pixels), [px for px in pixels if px in keep]
        if not pixels:
            raise InputError(f"region {region} overlaps no partition of catalog {catalog} "
                             f"({n_all} partitions)")
    return partition_files(catalog, pixels)


class CatalogView:
    """A DuckDB connection holding one catalog as the view ``catalog`` (its partitions, pruned to
    a region, LEFT JOINed with the derived extension), closed to all other files. Any HATS
    catalog or collection is accepted; one galspec did not write has no calibration or extension.
    Use as a context manager; ``relation(where)`` gives the filtered rows."""

    def __init__(self, catalog: str | Path, region: Region | str | None = None, ids=None):
        self.catalog = Path(catalog)
        self.region = parse_region(region) if region is not None else None
        files = _partition_files(self.catalog, self.region)
        galspec = is_galspec(self.catalog)
        damage = check_extension(self.catalog) if galspec else None
        extension = extension_files(self.catalog) if galspec else []
        if damage is not None:
            raise IncompleteOutputError(f"catalog {self.catalog}: {damage}; rerun `galspec decode "
                                        "--write-back --overwrite` to write it again")
        dirs = sorted({str(f.parent.resolve()) + "/" for f in files + extension})
        con = duckdb.connect(":memory:")
        self.con = con
        rel = con.read_parquet([str(f.resolve()) for f in files]).set_alias("c")
        if extension:
            derived = con.read_parquet([str(f.resolve()) for f in extension])
            keep = [f'"{c}"' for c in derived.columns if c not in (RA, DEC, HEALPIX)]
            derived = derived.project(", ".join(keep))
            rel = rel.join(derived.set_alias("d"), OBJECT_ID, how="left")
        rel.create_view("_catalog_all")
        keep = []
        if self.region is not None:
            con.register("_region_ids", pa.table({OBJECT_ID: self._region_ids(files)}))
            keep.append(f"{OBJECT_ID} IN (SELECT {OBJECT_ID} FROM _region_ids)")
        if ids is not None:
            con.register("_wanted_ids", pa.table({OBJECT_ID: pa.array(np.asarray(ids, dtype=np.int64))}))
            keep.append(f"{OBJECT_ID} IN (SELECT {OBJECT_ID} FROM _wanted_ids)")
        base = con.table("_catalog_all")
        for cond in keep:
            base = base.filter(cond)
        base.create_view(VIEW)
        double = duckdb.sqltypes.DOUBLE
        con.create_function("normal_cdf", normal_cdf_arrow, [double], double, type="arrow")
        con.create_function("t_cdf", t_cdf_arrow, [double, double], double, type="arrow")
        con.execute("SET allowed_directories = $1", [dirs])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        self.columns: list[str] = list(con.table(VIEW).columns)
        self.n_latents = sum(1 for c in self.columns
                             if LATENT_RE.match(c) and std_column(c) in self.columns)
        cal = read_calibration(self.catalog)
        self.calibrated = bool(cal)
        # the Student-t shape of each predicted column's calibrated distribution
        self.shapes: dict[str, float] = {} if not cal else {
            catalog_column(t): float(nu) for t, nu in zip(cal["targets"], cal["nu"], strict=True)}

    def _region_ids(self, files: list[Path]) -> pa.Array:
        t = pa.concat_tables([pq.read_table(f, columns=[OBJECT_ID, RA, DEC]) for f in files])
        inside = self.region.contains(t[RA].to_numpy(), t[DEC].to_numpy())
        return t[OBJECT_ID].filter(pa.array(inside))

    def relation(self, where: str | None = None) -> duckdb.DuckDBPyRelation:
        """The view's rows passing ``where`` (a SQL expression over its columns)."""
        rel = self.con.table(VIEW)
        if where is not None and where.strip():
            rel = self.run(lambda: rel.filter(where), where)
        return rel

    def run(self, func, where: str | None = None):
        """Call ``func``, turning a DuckDB error into a one-line InputError about ``where``."""
        try:
            return func()
        except duckdb.Error as exc:
            raise _explain(exc, where, self.columns) from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> CatalogView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _explain(exc: duckdb.Error, where: str | None, columns: list[str]) -> InputError:
    line = first_line(exc)
    about = f"--where {where!r}" if where else "the selection"
    m = re.search(r'Referenced column "([^"]+)" not found', line)
    if m:
        name = m.group(1)
        return UsageError(f"unknown column {name!r} in {about}.{did_you_mean(name, columns)}")
    if isinstance(exc, duckdb.PermissionException):
        return UsageError(
            f"{about} tries to read a file; an expression may use only the catalog's columns "
            f"(file access is disabled): {line}"
        )
    if isinstance(exc, duckdb.ParserException):
        hint = " (a filter is one SQL expression: no ';')" if where and ";" in where else ""
        return UsageError(f"bad expression in {about}: {line}{hint}")
    return InputError(f"cannot evaluate {about}: {line}")
