"""The catalog's Arrow schema and the check every partition table passes (the column names and
quality bits themselves are in :mod:`galspec_batch.columns`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from galspec_batch import defaults as D
from galspec_batch.columns import (
    DEC,
    HEALPIX,
    LATENT_RE,
    MC_SAMPLES,
    MODEL_ID,
    OBJECT_ID,
    QUALITY_FLAGS,
    RA,
    Z_PHOT,
    QualityFlag,
    aleatoric_column,
    epistemic_column,
    latent_names,
    std_column,
)
from galspec_batch.errors import InputError, did_you_mean
from galspec_batch.sky import healpix_29, pixel_at_order

MAX_LATENTS = 256


@dataclass(frozen=True)
class Outputs:
    """The predicted columns of a catalog: ``latent_1..latent_N``, then ``z_phot`` where the model
    predicts the redshift; each with its calibrated 1-sigma ``_std`` and, for a model that predicts
    its own variance (``parts``), the two parts of that std, ``_std_aleatoric`` and
    ``_std_epistemic`` (``std^2 = aleatoric^2 + epistemic^2``)."""

    n_latents: int = D.N_LATENTS
    redshift: bool = False
    parts: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.n_latents, int) and 1 <= self.n_latents <= MAX_LATENTS):
            raise InputError(f"n_latents must be an integer in [1, {MAX_LATENTS}], got {self.n_latents!r}")

    @property
    def values(self) -> list[str]:
        """The predicted quantities' columns, in the checkpoint's target order."""
        return latent_names(self.n_latents) + ([Z_PHOT] if self.redshift else [])

    @property
    def spreads(self) -> list[str]:
        """Their spread columns: every ``_std``, then the aleatoric and epistemic parts."""
        return [c for key, cols in self.by_part().items() if key != "mean" for c in cols]

    def by_part(self) -> dict[str, list[str]]:
        """The columns of each part of a prediction, keyed as :func:`galspec_batch.mc.mc_predict`
        names them: ``mean``, ``std`` and, with ``parts``, ``std_aleatoric`` and ``std_epistemic``."""
        v = self.values
        out = {"mean": v, "std": [std_column(c) for c in v]}
        if self.parts:
            out["std_aleatoric"] = [aleatoric_column(c) for c in v]
            out["std_epistemic"] = [epistemic_column(c) for c in v]
        return out

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_OUTPUTS = Outputs()


def catalog_schema(outputs: Outputs = DEFAULT_OUTPUTS, extra: list[pa.Field] | tuple[pa.Field, ...] = ()
                   ) -> pa.Schema:
    """The Arrow schema of a catalog with ``outputs``; ``extra`` fields come last."""
    fields = [
        pa.field(OBJECT_ID, pa.int64(), nullable=False),
        pa.field(RA, pa.float64(), nullable=False),
        pa.field(DEC, pa.float64(), nullable=False),
        pa.field(HEALPIX, pa.int64(), nullable=False),
    ]
    # null exactly where QualityFlag.BAD_PREDICTION is set: a non-finite prediction is never a number
    fields += [pa.field(c, pa.float32(), nullable=True) for c in outputs.values + outputs.spreads]
    fields += [
        pa.field(MC_SAMPLES, pa.int16(), nullable=False),
        # int32 and a plain string: types astropy, VOTable and TOPCAT all read (Parquet still
        # dictionary-encodes the one model id of a file)
        pa.field(QUALITY_FLAGS, pa.int32(), nullable=False),
        pa.field(MODEL_ID, pa.string(), nullable=False),
    ]
    names = {f.name for f in fields}
    for f in extra:
        if f.name in names:
            raise InputError(f"extra column {f.name!r} repeats a catalog column or another extra column")
        names.add(f.name)
    return pa.schema(fields + list(extra))


def predicted_columns(names: list[str]) -> list[str]:
    """The columns of ``names`` that hold predictions or their spreads."""
    values = [c for c in names if LATENT_RE.match(c) or c == Z_PHOT]
    spreads = [f(c) for c in values for f in (std_column, aleatoric_column, epistemic_column)]
    return values + [c for c in spreads if c in names]


def conform_table(
    table: pa.Table | pd.DataFrame,
    schema: pa.Schema,
    order: int,
    pixel: int,
    *,
    model_id: str | None = None,
) -> pa.Table:
    """Check a partition's rows against ``schema`` and return them cast, in schema column order and
    sorted by ``_healpix_29``. ``_healpix_29`` is computed when the table lacks it.

    Refuses (InputError) missing or unknown columns, nulls (but in the latent columns of a row
    flagged BAD_PREDICTION), latents that are not finite, values that do not cast, duplicate ids,
    positions off the sky, ``_healpix_29`` that disagrees with ra/dec, rows outside the partition
    pixel, and a ``model_id`` other than the catalog's.
    """
    where = f"partition Norder={order} Npix={pixel}"
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if HEALPIX not in table.column_names and RA in table.column_names and DEC in table.column_names:
        hp = healpix_29(table[RA].to_numpy(), table[DEC].to_numpy())
        table = table.append_column(HEALPIX, pa.array(hp, pa.int64()))
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise InputError(f"{where}: table lacks columns {missing}; a catalog table has {schema.names}")
    unknown = [n for n in table.column_names if n not in schema.names]
    if unknown:
        raise InputError(
            f"{where}: unknown column {unknown[0]!r} (declare extra columns when the catalog begins)."
            + did_you_mean(unknown[0], schema.names)
        )
    columns = []
    for field in schema:
        col = table[field.name]
        if col.null_count and not field.nullable:
            raise InputError(f"{where}: column {field.name!r} has {col.null_count} nulls; none are allowed")
        try:
            columns.append(col.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(
                f"{where}: column {field.name!r} of type {col.type} does not cast to {field.type}: {exc}"
            ) from None
    out = pa.Table.from_arrays(columns, schema=schema)
    _check_rows(out, order, pixel, model_id, where)
    return out.sort_by([(HEALPIX, "ascending"), (OBJECT_ID, "ascending")])


def _check_latents(table: pa.Table, ids: np.ndarray, where: str) -> None:
    """Predictions and spreads finite, and null exactly in the rows flagged BAD_PREDICTION."""
    bad_rows = (table[QUALITY_FLAGS].to_numpy() & int(QualityFlag.BAD_PREDICTION)) != 0
    for name in predicted_columns(table.column_names):
        col = table[name].combine_chunks()
        values = col.to_numpy(zero_copy_only=False)
        null = col.is_null().to_numpy(zero_copy_only=False)
        wrong = (null != bad_rows) | (~null & ~np.isfinite(values))
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise InputError(
                f"{where}: object {ids[i]} has {name}={values[i]}; a prediction is a finite number, or "
                "null in a row flagged BAD_PREDICTION"
            )


def _check_rows(table: pa.Table, order: int, pixel: int, model_id: str | None, where: str) -> None:
    ids = table[OBJECT_ID].to_numpy()
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{where}: object_id {int(uniq[counts > 1][0])} appears more than once")
    _check_latents(table, ids, where)
    ra, dec = table[RA].to_numpy(), table[DEC].to_numpy()
    bad = ~((ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{where}: object {ids[i]} has ra={ra[i]}, dec={dec[i]}; expected 0 <= ra < 360, |dec| <= 90"
        )
    hp = table[HEALPIX].to_numpy()
    off = hp != healpix_29(ra, dec)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        want = healpix_29(ra[i], dec[i])[0]
        raise InputError(f"{where}: object {ids[i]} has {HEALPIX}={hp[i]} but its ra/dec give {want}")
    outside = pixel_at_order(hp, order) != pixel
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"{where}: {int(outside.sum())} rows lie outside the partition, e.g. object {ids[i]} "
            f"in Npix={int(pixel_at_order(hp[i : i + 1], order)[0])}"
        )
    if model_id is not None and len(table):
        found = set(table[MODEL_ID].unique().to_pylist())
        if found != {model_id}:
            raise InputError(f"{where}: model_id {sorted(found)}; this catalog is made by {model_id!r}")
