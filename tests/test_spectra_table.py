"""The metadata of spectra tables and decoded spectra: grid, units and descriptions, read back with
pyarrow and astropy."""

import json

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from galspec_batch.columns import DERIVED_COLUMNS, NORM, NORM_UNIT, Z_PHOT, std_column
from galspec_batch.decode import decoded_schema, read_decoded
from galspec_batch.spectra import WAVE, WAVE_EDGES
from galspec_batch.spectra_table import GRID_KEY, read_spectra_table, spectra_to_table, write_spectra_table


def _spectra(n=3, norm=True):
    rng = np.random.default_rng(0)
    extra = {NORM: np.array([12.5, 3.0, 40.0]), "truth_z": np.full(n, 0.1)} if norm else None
    return spectra_to_table(np.arange(n) + 7, np.array([10.0, 20.0, 30.0]), np.array([-1.0, 0.0, 1.0]),
                            np.full(n, 0.1), rng.random((n, 1000)), np.ones((n, 1000)), extra)


def _grid(metadata):
    return json.loads(metadata[GRID_KEY])


def test_spectra_table_carries_its_grid_units_and_descriptions(tmp_path):
    path = write_spectra_table(tmp_path / "s.parquet", _spectra())
    schema = pq.read_schema(path)
    for grid in map(_grid, (schema.metadata, schema.field("flux").metadata, schema.field("ivar").metadata)):
        assert np.array_equal(grid["wave"], WAVE) and np.array_equal(grid["wave_edges"], WAVE_EDGES)
        assert (grid["wave_unit"], grid["wave_frame"], grid["wave_medium"]) == ("Angstrom", "rest", "vacuum")
        assert grid["loglam"] == [3.53, 3.92, 1000] and grid["norm_unit"] == NORM_UNIT
        assert "norm" in grid["flux_normalisation"] and grid["flux_unit"] == ""
    assert schema.field("ra").metadata[b"unit"] == schema.field("dec").metadata[b"unit"] == b"deg"
    assert schema.field(NORM).metadata[b"unit"] == b"1e-17 erg / (Angstrom s cm2)"
    assert b"unit" not in schema.field("flux").metadata  # normalised: dimensionless
    assert schema.field("flux").metadata[b"description"].startswith(b"rest-frame f_lambda on the grid")
    assert b"redshift" in schema.field("z").metadata[b"description"]
    assert schema.field("truth_z").metadata is None  # not a column galspec describes
    assert read_spectra_table(path).schema.field("ra").metadata[b"unit"] == b"deg"

    t = Table.read(path)
    assert t["ra"].unit == u.deg and t["dec"].unit == u.deg and t["z"].unit is None
    assert t[NORM].unit == u.Unit(1e-17 * u.erg / u.s / u.cm**2 / u.AA)
    assert t["flux"].shape == (3, 1000) and t["flux"].unit is None
    assert t["ivar"].description.startswith("inverse variance of flux")
    assert np.array_equal(t.meta["wave"], WAVE) and t.meta["wave_unit"] == "Angstrom"
    np.testing.assert_array_equal(t[NORM], [12.5, 3.0, 40.0])


def test_old_tables_without_norm_or_metadata_still_read(tmp_path):
    pq.write_table(_spectra(norm=False), tmp_path / "old.parquet")
    table = read_spectra_table(tmp_path / "old.parquet")
    assert NORM not in table.column_names and table.num_rows == 3
    # and a rewrite gives them the metadata
    schema = pq.read_schema(write_spectra_table(tmp_path / "new.parquet", table))
    assert np.array_equal(_grid(schema.field("flux").metadata)["wave"], WAVE)


def test_decoded_spectra_carry_grid_units_and_read_back(tmp_path):
    z_cols = [Z_PHOT, std_column(Z_PHOT)]
    schema = decoded_schema(z_cols, {"n_draws": 8})
    n = 2
    spectrum = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * 1000, np.float32)), 1000)
    arrays = {"object_id": pa.array([1, 2], pa.int64()), "ra": pa.array([1.0, 2.0]),
              "dec": pa.array([3.0, 4.0])}
    arrays.update({c: spectrum for c in ("flux_median", "flux_lo", "flux_hi")})
    table = pa.table({f.name: arrays.get(f.name, pa.array(np.full(n, 0.5, np.float32))) for f in schema},
                     schema=schema)
    pq.write_table(table, tmp_path / "d.parquet")
    read = pq.read_schema(tmp_path / "d.parquet")
    assert np.array_equal(_grid(read.metadata)["wave"], WAVE)
    for c in ("flux_median", "flux_lo", "flux_hi"):
        assert np.array_equal(_grid(read.field(c).metadata)["wave_edges"], WAVE_EDGES)
    assert read.field("flux_lo").metadata[b"description"].startswith(b"16th percentile")
    assert read.field("ew_halpha").metadata[b"unit"] == b"Angstrom"
    assert read.field(std_column("ew_halpha")).metadata[b"unit"] == b"Angstrom"

    t = Table.read(tmp_path / "d.parquet")
    assert t["ra"].unit == u.deg and t["ew_oii"].unit == u.AA and t["d4000"].unit is None
    assert t["z_phot_std"].description == "standard deviation (1-sigma) of z_phot"
    assert t["flux_median"].shape == (n, 1000) and np.array_equal(t.meta["wave"], WAVE)
    assert set(DERIVED_COLUMNS) <= set(t.colnames)

    wave, spectra, rest = read_decoded(tmp_path / "d.parquet")
    assert wave == pytest.approx(WAVE, abs=1e-4) and spectra["median"].shape == (n, 1000)
    assert rest["object_id"].to_pylist() == [1, 2]
