"""Target selection from a latent catalog: a SQL filter run by DuckDB over the catalog's Parquet
files, optional region, uncertainty-aware cuts and ranking, written ready for fiber assignment.

**Safety.** Queries run in the locked-down view of :mod:`galspec_batch.catalog.view`, closed to
every file but the catalog's own. The user's text only ever reaches DuckDB as one filter
expression (parsed as an expression: a second statement is a syntax error); ``--order-by`` is
checked against the column names.

**Probability** (``prob="latent_2 > 0.5"``): from the quantity's predictive distribution, its
value ``x`` and 1-sigma ``x_std``: in a calibrated catalog a predicted column (a latent, z_phot)
has the Student-t shape of its calibration (:mod:`galspec_batch.uncertainty`), so
``P(x > t) = T_nu((x - t) / x_std * q_nu)`` with ``q_nu`` the t's 68.27% half-width; otherwise (a
derived quantity's MC median and std, an uncalibrated catalog) it is taken as Gaussian,
``P(x > t) = Phi((x - t) / x_std)``; a std of 0 gives 0 or 1.

**Missing values.** A column named in ``where`` or ``prob`` that is NULL for some rows (a derived
quantity decoded for only some objects; a prediction flagged BAD_PREDICTION) would silently leave
those rows out: the selection is refused, saying how many rows have no value, unless
``allow_missing``; the output's metadata records how many were left out.

**Uncertainty rank** (``rank="uncertainty"``): ``spread = sqrt(mean_i (latent_i_std / s_i)^2)``,
the RMS MC spread of the latents in units of each latent's scatter ``s_i`` among the objects
queried (the catalog, or the region). The largest spreads are the spectra the model knows least:
observe them, encode their spectra into labels (``galspec vae encode``) and fine-tune
(``galspec train --init``).

**Priority** (higher = observe first): with ``rank``, ``1 - i/n`` for the i-th of n rows in rank
order; otherwise with ``prob``, the probability; otherwise with ``order_by``, ``1 - i/n`` in that
order; otherwise 1.

**Derived extension.** ``galspec decode --write-back`` writes the HATS extension
``<catalog>/derived/`` (``object_id`` plus ``ew_*``, ``d4000`` and their ``_std``); it is LEFT
JOINed on ``object_id``, so its columns can be used like catalog columns (NULL for objects not
decoded). The primary catalog's files are never rewritten.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path, refuse_existing
from galspec_batch.catalog.view import VIEW, CatalogView
from galspec_batch.columns import (
    DEC,
    OBJECT_ID,
    PRIORITY,
    PROB,
    RA,
    SPREAD,
    describe_column,
    latent_names,
    std_column,
)
from galspec_batch.errors import InputError, UsageError, did_you_mean
from galspec_batch.regions import Region
from galspec_batch.uncertainty import NU_MAX, one_sigma

RANKS = ("uncertainty",)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".fits": "fits", ".fit": "fits",
           ".ecsv": "ecsv"}
SELECT_METADATA_KEY = b"galspec.select"
SELECTION_KEY = b"galspec.selection"  # what select_targets records in its table's metadata

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PROB_RE = re.compile(rf"^\s*({_IDENT})\s*(>=|<=|>|<)\s*({_NUMBER})\s*$")
_ORDER_RE = re.compile(rf"^\s*({_IDENT})(?:\s+(asc|desc))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ProbCut:
    """A condition ``column op threshold`` whose probability is computed from ``column``'s MC
    mean and ``column_std``."""

    column: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> ProbCut:
        m = _PROB_RE.match(text)
        if m is None:
            raise UsageError(
                f"bad --prob {text!r}: expected COLUMN OP NUMBER with OP one of > >= < <= "
                "(e.g. 'latent_2 > 0.5' or 'ew_halpha > 10')"
            )
        threshold = float(m.group(3))
        if not np.isfinite(threshold):
            raise UsageError(f"bad --prob {text!r}: the threshold must be a finite number")
        return cls(m.group(1), m.group(2), threshold)

    def sql(self, nu: float | None = None) -> str:
        """The probability as a SQL expression over the (validated) column names, Gaussian or (with
        ``nu``) Student-t."""
        x, s, t = _quote(self.column), _quote(std_column(self.column)), repr(self.threshold)
        z = f"({x} - {t}) / {s}" if self.op.startswith(">") else f"({t} - {x}) / {s}"
        cdf = (f"normal_cdf({z})" if nu is None or nu >= NU_MAX
               else f"t_cdf({z} * {float(one_sigma(nu))!r}, {float(nu)!r})")
        return f"CASE WHEN {s} > 0 THEN {cdf} WHEN {x} {self.op} {t} THEN 1.0 ELSE 0.0 END"

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.threshold:g}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def referenced_columns(expr: str | None, columns: list[str]) -> list[str]:
    """The catalog columns named in an expression (string literals ignored), in column order."""
    if not expr:
        return []
    text = re.sub(r"'(?:[^']|'')*'", " ", expr)
    words = {w.strip('"') for w in re.findall(rf'"[^"]+"|{_IDENT}', text)}
    return [c for c in columns if c in words]


def _order_terms(order_by: str, allowed: list[str]) -> list[tuple[str, bool]]:
    terms = []
    for part in order_by.split(","):
        m = _ORDER_RE.match(part)
        if m is None:
            raise UsageError(f"bad --order-by {order_by!r}: expected COLUMN [ASC|DESC][, COLUMN ...]")
        name, desc = m.group(1), (m.group(2) or "asc").lower() == "desc"
        if name not in allowed:
            hint = did_you_mean(name, allowed)
            raise UsageError(f"unknown column {name!r} in --order-by {order_by!r}.{hint}")
        terms.append((name, desc))
    return terms


def select_targets(
    catalog: str | Path,
    *,
    where: str | None = None,
    region: Region | str | None = None,
    prob: str | ProbCut | None = None,
    min_prob: float | None = None,
    rank: str | None = None,
    order_by: str | None = None,
    limit: int | None = None,
    columns: list[str] | tuple[str, ...] = (),
    allow_missing: bool = False,
) -> pa.Table:
    """Select targets from a catalog (see the module docstring for prob, rank, priority and
    missing values; ``selection_record`` reads what was left out and whether it was calibrated).

    ``min_prob`` (default 0.5 with ``prob``) keeps rows with ``prob >= min_prob``; rows come in
    rank order, else ``order_by``, else decreasing ``prob``, ties by ``object_id``.
    Columns: ``object_id, ra, dec, priority``, then the columns named in ``where``, ``prob`` and
    ``order_by``, the extra ``columns``, then ``prob``/``spread`` when asked.
    """
    if rank is not None and rank not in RANKS:
        raise UsageError(f"unknown --rank {rank!r}; expected one of {list(RANKS)}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    cut = ProbCut.parse(prob) if isinstance(prob, str) else prob
    if min_prob is not None and cut is None:
        raise UsageError("--min-prob needs --prob (the condition whose probability is cut on)")
    if min_prob is not None and not 0.0 <= min_prob <= 1.0:
        raise UsageError(f"--min-prob must be in [0, 1], got {min_prob}")
    with CatalogView(catalog, region) as view:
        cols = view.columns
        if cut is not None:
            for name in (cut.column, std_column(cut.column)):
                if name not in cols:
                    raise UsageError(
                        f"--prob {str(cut)!r} needs column {name!r}, which the catalog lacks "
                        f"(a latent or a derived quantity with its _std).{did_you_mean(name, cols)}"
                    )
        unknown = [c for c in columns if c not in cols]
        if unknown:
            raise UsageError(f"unknown column {unknown[0]!r} in --columns.{did_you_mean(unknown[0], cols)}")
        needed = referenced_columns(where, cols)
        if cut is not None:
            needed += [cut.column, std_column(cut.column)]
        missing, total = _count_missing(view, list(dict.fromkeys(needed)))
        if missing and not allow_missing:
            raise UsageError(
                f"{missing} of {total} rows of catalog {catalog} have no value for "
                f"{' or '.join(dict.fromkeys(needed))} and would be left out silently; pass --allow-missing "
                f"to select among the {total - missing} that have one (for a derived quantity, "
                "`galspec decode --write-back` computes it for more objects)")
        rel = view.relation(where)
        computed = {}
        if cut is not None:
            computed[PROB] = cut.sql(view.shapes.get(cut.column))
        if rank == "uncertainty":
            computed[SPREAD] = _spread_sql(view)
        terms = _order_terms(order_by, cols + list(computed)) if order_by else []
        wanted = [OBJECT_ID, RA, DEC]
        wanted += referenced_columns(where, cols)
        if cut is not None:
            wanted += [cut.column, std_column(cut.column)]
        wanted += [n for n, _ in terms if n in cols] + list(columns)
        wanted = list(dict.fromkeys(wanted))
        exprs = [_quote(c) for c in wanted] + [f"{sql} AS {name}" for name, sql in computed.items()]
        rel = rel.project(", ".join(exprs))
        if cut is not None:
            rel = rel.filter(f"{PROB} >= {float(D.MIN_PROB if min_prob is None else min_prob)!r}")
        if rank == "uncertainty":
            terms = [(SPREAD, True)] + terms
        elif cut is not None and not terms:
            terms = [(PROB, True)]
        order = [f"{_quote(n)} {'DESC' if d else 'ASC'} NULLS LAST" for n, d in terms] + [OBJECT_ID]
        rel = rel.order(", ".join(order))
        if limit is not None:
            rel = rel.limit(int(limit))
        table = view.run(lambda: pa.table(rel), where)
        record = {"rows_without_value": missing, "rows": total, "columns": list(dict.fromkeys(needed)),
                  "calibrated": view.calibrated}
    table = _with_priority(table, cut, rank, bool(order_by))
    return table.replace_schema_metadata({SELECTION_KEY: json.dumps(record)})


def selection_record(table: pa.Table) -> dict:
    """What :func:`select_targets` recorded: rows left out for want of a value, and whether the
    catalog's spreads were calibrated."""
    return json.loads((table.schema.metadata or {}).get(SELECTION_KEY, b"{}"))


def _count_missing(view: CatalogView, columns: list[str]) -> tuple[int, int]:
    """(rows with NULL in any of ``columns``, rows) of the view."""
    if not columns:
        return 0, 0
    any_null = " OR ".join(f"{_quote(c)} IS NULL" for c in columns)
    missing, total = view.run(lambda: view.con.table(VIEW).aggregate(
        f"count(*) FILTER (WHERE {any_null}), count(*)").fetchall()[0])
    return int(missing), int(total)


def _spread_sql(view: CatalogView) -> str:
    if view.n_latents == 0:
        raise InputError(f"--rank uncertainty needs latent_i, latent_i_std columns; {view.catalog} has none")
    names = latent_names(view.n_latents)
    stats = view.run(lambda: view.con.table(VIEW).aggregate(
        ", ".join(f"stddev_samp({_quote(n)})" for n in names)).fetchall()[0])
    terms = []
    for n, s in zip(names, stats, strict=True):
        scale = float(s) if s is not None and np.isfinite(s) and s > 0 else 1.0
        terms.append(f"pow({_quote(std_column(n))} / {scale!r}, 2)")
    return f"sqrt(({' + '.join(terms)}) / {len(terms)})"


def _with_priority(table: pa.Table, cut: ProbCut | None, rank: str | None, ordered: bool) -> pa.Table:
    n = table.num_rows
    if rank is not None or (cut is None and ordered):
        priority = 1.0 - np.arange(n) / max(n, 1)
    elif cut is not None:
        priority = table[PROB].to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        priority = np.ones(n)
    return table.add_column(3, PRIORITY, pa.array(priority, pa.float64()))


def write_targets(
    table: pa.Table, path: str | Path, *, overwrite: bool = False, meta: dict | None = None
) -> Path:
    """Write a target table as Parquet, CSV, FITS or ECSV (by extension), atomically; FITS and
    ECSV carry each column's unit and description (FITS as TUNITn and TCOMMn)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot write {path}: unknown extension {path.suffix!r}; use one of {sorted(FORMATS)}"
        )
    refuse_existing(path, overwrite)
    plain = pa.table({n: _plain(c) for n, c in zip(table.column_names, table.columns, strict=True)})
    doc = json.dumps({**(meta or {}), **selection_record(table)}, sort_keys=True)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if fmt == "parquet":
            pq.write_table(plain.replace_schema_metadata({SELECT_METADATA_KEY: doc}), tmp)
        elif fmt == "csv":
            pacsv.write_csv(plain, tmp)
        else:
            _astropy_table(plain, doc).write(tmp, format="fits" if fmt == "fits" else "ascii.ecsv")
            if fmt == "fits":
                _fits_comments(tmp, plain.column_names)
    return path


def _astropy_table(plain: pa.Table, doc: str):
    from astropy.table import Table

    t = Table({n: _fits_column(plain[n]) for n in plain.column_names})
    for n in plain.column_names:
        unit, description = describe_column(n)
        t[n].unit, t[n].description = unit, description or None
    t.meta["COMMENTS"] = [f"galspec select {doc}"]
    return t


def _fits_comments(path: Path, names: list[str]) -> None:
    """TCOMMn (the HEASARC column-comment convention TOPCAT shows) for each described column."""
    from astropy.io import fits

    with fits.open(path, mode="update") as hdul:
        header = hdul[1].header
        for i, n in enumerate(names, start=1):
            if description := describe_column(n)[1]:
                header[f"TCOMM{i}"] = description[:68]


def _fits_column(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.fill_null("").to_pylist(), dtype=str)
    return col.to_numpy(zero_copy_only=False)


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary columns as plain strings (CSV and FITS know no dictionaries)."""
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
