"""Units, descriptions and UCDs of the columns galspec writes (``columns.describe_column``), where
readers look for them: Parquet field metadata (``unit``, ``description``, ``ucd``), astropy's
``table_meta_yaml`` (``Table.read`` gives units) and VO-Parquet (the IVOA VOTable-in-Parquet note,
which TOPCAT reads), the VOTable made by hats' ``nested_frame_to_vo_schema``."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pyarrow as pa

from galspec_batch.columns import (
    DEC,
    HEALPIX,
    MC_SAMPLES,
    MODEL_ID,
    OBJECT_ID,
    QUALITY_FLAGS,
    RA,
    STD_SUFFIX,
    Z_PHOT,
    describe_column,
)

VO_VERSION_KEY = b"IVOA.VOTable-Parquet.version"
VO_CONTENT_KEY = b"IVOA.VOTable-Parquet.content"
ASTROPY_KEY = b"table_meta_yaml"

_UCDS = {
    OBJECT_ID: "meta.id;meta.main",
    RA: "pos.eq.ra;meta.main",
    DEC: "pos.eq.dec;meta.main",
    HEALPIX: "pos.healpix",
    Z_PHOT: "src.redshift.phot",
    QUALITY_FLAGS: "meta.code.qual",
    MODEL_ID: "meta.id",
    MC_SAMPLES: "meta.number",
}


def column_ucd(name: str) -> str | None:
    """The IVOA UCD of a column galspec writes, where one fits."""
    if STD_SUFFIX in name:
        return "stat.error"
    return _UCDS.get(name)


def described_schema(schema: pa.Schema, *, table_meta: dict | None = None, vo: bool = True,
                     string_lengths: dict[str, int] | None = None) -> pa.Schema:
    """``schema`` with every known column's unit, description and UCD in its field metadata, and
    the same in the schema metadata as astropy's YAML header (with ``table_meta`` as the table's
    ``meta``; ``string_lengths``, the longest value of string columns, go beside it as astropy's
    ``table::len::NAME``, their width) and, with ``vo``, as VO-Parquet (flat columns only)."""
    fields = []
    units, descriptions, ucds = {}, {}, {}
    for f in schema:
        unit, description = describe_column(f.name)
        meta = dict(f.metadata or {})
        for key, value, into in (("unit", unit, units), ("description", description, descriptions),
                                 ("ucd", column_ucd(f.name), ucds)):
            if value:
                meta[key.encode()] = value.encode()
                into[f.name] = value
        fields.append(f.with_metadata(meta or None))
    meta = dict(schema.metadata or {})
    meta[ASTROPY_KEY] = _astropy_yaml(schema, units, descriptions, table_meta or {}).encode()
    for name, n in (string_lengths or {}).items():
        meta[f"table::len::{name}".encode()] = str(int(n)).encode()
    if vo:
        meta[VO_VERSION_KEY] = b"1.0"
        meta[VO_CONTENT_KEY] = _votable_xml(schema, units, descriptions, ucds).encode()
    return pa.schema(fields, metadata=meta)


def _astropy_yaml(schema: pa.Schema, units: dict, descriptions: dict, table_meta: dict) -> str:
    from astropy.table import Table, meta

    t = Table(meta=table_meta)
    for f in schema:
        t[f.name] = np.empty(0, dtype=_numpy_dtype(f.type))
        t[f.name].unit = units.get(f.name)
        t[f.name].description = descriptions.get(f.name)
    return "\n".join(meta.get_yaml_from_table(t))


def _votable_xml(schema: pa.Schema, units: dict, descriptions: dict, ucds: dict) -> str:
    import nested_pandas as npd
    from astropy.units import UnitsWarning
    from hats.io.parquet_metadata import nested_frame_to_vo_schema

    # numpy dtypes, so that the VOTable says float for float32 (pyarrow dtypes would give double)
    frame = npd.NestedFrame(schema.remove_metadata().empty_table().to_pandas())
    strings = {f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)}
    out = io.BytesIO()
    with warnings.catch_warnings():
        # SDSS's Angstrom and erg: deprecated in VOUnit 1.0, which still admits them
        warnings.filterwarnings("ignore", "The unit '(Angstrom|erg)' has been deprecated", UnitsWarning)
        vo = nested_frame_to_vo_schema(frame, field_units=units, field_descriptions=descriptions,
                                       field_ucds=ucds)
        for field in vo.get_first_table().iter_fields_and_params():
            if field.name in strings:
                field.arraysize = "*"  # a string of any length, not one character
        vo.to_xml(out)
    return out.getvalue().decode()


def _numpy_dtype(t: pa.DataType) -> np.dtype:
    if pa.types.is_fixed_size_list(t):
        return np.dtype((t.value_type.to_pandas_dtype(), (t.list_size,)))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.dtype("U1")
    try:
        return np.dtype(t.to_pandas_dtype())
    except NotImplementedError:  # e.g. a dictionary column: the header only carries its unit
        return np.dtype(object)
