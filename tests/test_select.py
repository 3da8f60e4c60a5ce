"""Target selection: DuckDB filters against pandas, safety of the expression, probability and
uncertainty ranking, output formats, the derived extension."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from astropy.table import Table
from click.testing import CliRunner
from scipy.stats import norm

from galspec_batch.catalog import read_catalog
from galspec_batch.cli import main
from galspec_batch.errors import IncompleteOutputError, InputError, MissingFileError, UsageError
from galspec_batch.regions import parse_region
from galspec_batch.select import ProbCut, select_targets, selection_record, write_targets


@pytest.fixture(scope="module")
def df(writable_catalog):
    return read_catalog(writable_catalog).to_pandas()


def test_where_equals_pandas_filter(writable_catalog, df):
    cut = float(df["latent_2"].median())
    t = select_targets(writable_catalog, where=f"latent_2 > {cut} AND quality_flags = 0").to_pandas()
    expected = df[(df.latent_2 > cut) & (df.quality_flags == 0)]
    assert 0 < len(t) < len(df)
    assert sorted(t.object_id) == sorted(expected.object_id)
    assert list(t.columns[:4]) == ["object_id", "ra", "dec", "priority"]
    assert {"latent_2", "quality_flags"} <= set(t.columns)
    assert (t.priority == 1.0).all()
    merged = t.merge(expected, on="object_id", suffixes=("", "_cat"))
    np.testing.assert_allclose(merged.ra, merged.ra_cat)
    np.testing.assert_allclose(merged.latent_2, merged.latent_2_cat)


def test_order_by_and_limit(writable_catalog, df):
    t = select_targets(writable_catalog, where="latent_1 < 0", order_by="latent_3 DESC", limit=7).to_pandas()
    expected = df[df.latent_1 < 0].sort_values("latent_3", ascending=False).head(7)
    assert list(t.object_id) == list(expected.object_id)
    np.testing.assert_allclose(t.priority, 1 - np.arange(7) / 7)
    asc = select_targets(writable_catalog, order_by="latent_3", limit=3).to_pandas()
    assert list(asc.object_id) == list(df.sort_values("latent_3").head(3).object_id)


def test_region_cut(writable_catalog, df):
    region = parse_region("cone:153,0,1.5")
    t = select_targets(writable_catalog, region=region)
    inside = df[region.contains(df.ra.to_numpy(), df.dec.to_numpy())]
    assert 0 < t.num_rows < len(df)
    assert sorted(t["object_id"].to_pylist()) == sorted(inside.object_id)


def test_probability_is_the_gaussian_formula(writable_catalog, df):
    t = select_targets(writable_catalog, prob="latent_2 > 0.3",
                       min_prob=0.0).to_pandas().set_index("object_id")
    ref = df.set_index("object_id").loc[t.index]
    expected = norm.sf((0.3 - ref.latent_2.astype(float)) / ref.latent_2_std.astype(float))
    assert len(t) == len(df)
    np.testing.assert_allclose(t.prob, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(t.priority, t.prob)
    assert (np.diff(t.prob.to_numpy()) <= 0).all()  # most probable first

    cut = select_targets(writable_catalog, prob="latent_2 > 0.3", min_prob=0.6).to_pandas()
    assert len(cut) == int((expected >= 0.6).sum()) > 0
    below = select_targets(writable_catalog, prob="latent_2 <= 0.3",
                           min_prob=0.0).to_pandas().set_index("object_id")
    np.testing.assert_allclose(below.prob, 1 - t.prob.loc[below.index], atol=1e-6)


def test_prob_parse_refuses_bad_text():
    assert ProbCut.parse(" ew_halpha >= 1e1 ") == ProbCut("ew_halpha", ">=", 10.0)
    for bad in ("latent_2 > x", "latent_2 = 1", "latent_2 > 1; drop", "1 < latent_2"):
        with pytest.raises(InputError, match="bad --prob"):
            ProbCut.parse(bad)


def test_rank_uncertainty_returns_the_largest_spread(writable_catalog, df):
    t = select_targets(writable_catalog, rank="uncertainty", limit=5).to_pandas()
    scale = np.array([df[f"latent_{i}"].std() for i in range(1, 7)])
    stds = np.stack([df[f"latent_{i}_std"] for i in range(1, 7)], axis=1)
    spread = np.sqrt(((stds / scale) ** 2).mean(axis=1))
    top = df.object_id.to_numpy()[np.argsort(-spread)[:5]]
    assert list(t.object_id) == list(top)
    np.testing.assert_allclose(t.spread, np.sort(spread)[::-1][:5], rtol=1e-5)
    np.testing.assert_allclose(t.priority, [1.0, 0.8, 0.6, 0.4, 0.2])


def test_outputs_in_four_formats(writable_catalog, df, tmp_path):
    t = select_targets(writable_catalog, where="latent_1 > -1.2", order_by="latent_1", limit=10,
                       columns=["model_id"])
    ref = t.to_pandas()
    for name in ("t.parquet", "t.csv", "t.fits", "t.ecsv"):
        write_targets(t, tmp_path / name, meta={"where": "latent_1 > -1.2"})
    back = {
        "parquet": pd.read_parquet(tmp_path / "t.parquet"),
        "csv": pd.read_csv(tmp_path / "t.csv"),
        "fits": Table.read(tmp_path / "t.fits").to_pandas(),
        "ecsv": Table.read(tmp_path / "t.ecsv").to_pandas(),
    }
    # FITS and ECSV carry units and descriptions that astropy (and TOPCAT) read
    from astropy import units as u
    from astropy.io import fits

    for name in ("t.fits", "t.ecsv"):
        at = Table.read(tmp_path / name)
        assert at["ra"].unit == u.deg and at["dec"].unit == u.deg and at["latent_1"].unit is None
        assert "latent 1" in at["latent_1"].description and at["model_id"].description.startswith("the model")
    header = fits.getheader(tmp_path / "t.fits", 1)
    i = [header[f"TTYPE{k}"] for k in range(1, header["TFIELDS"] + 1)].index("ra") + 1
    assert header[f"TUNIT{i}"] == "deg" and header[f"TCOMM{i}"] == "right ascension (ICRS)"
    for fmt, b in back.items():
        assert list(b.columns) == list(ref.columns), fmt
        np.testing.assert_array_equal(b.object_id, ref.object_id)
        np.testing.assert_allclose(b.ra, ref.ra)
        np.testing.assert_allclose(b.latent_1, ref.latent_1, rtol=1e-6)
        assert set(b.model_id.astype(str)) == set(df.model_id.astype(str))
    with pytest.raises(FileExistsError):
        write_targets(t, tmp_path / "t.csv")
    with pytest.raises(InputError, match="unknown extension"):
        write_targets(t, tmp_path / "t.txt")


def test_derived_extension_is_joined(writable_catalog, df):
    from galspec_batch.catalog.extension import remove_extension, write_extension
    from galspec_batch.catalog.paths import derived_marker

    ids = df.object_id.to_numpy()[:50]
    ew = np.linspace(0, 49, 50).astype(np.float32)
    side = pa.table({"object_id": ids, "ew_halpha": ew, "ew_halpha_std": np.full(50, 2.0, np.float32)})
    try:
        write_extension(writable_catalog, side, {})
        derived_marker(writable_catalog).unlink()
        with pytest.raises(IncompleteOutputError, match="has no record of being written whole"):
            select_targets(writable_catalog, where="ew_halpha > 40")  # not written whole by galspec
        write_extension(writable_catalog, side, {})
        # 190 of the 240 rows have no ew_halpha: a cut on it is refused unless asked for
        with pytest.raises(UsageError, match="190 of 240 rows .* no value for ew_halpha .* --allow-missing"):
            select_targets(writable_catalog, where="ew_halpha > 40")
        with pytest.raises(UsageError, match="no value for ew_halpha or ew_halpha_std"):
            select_targets(writable_catalog, prob="ew_halpha > 10")
        t = select_targets(writable_catalog, where="ew_halpha > 40", allow_missing=True)
        assert sorted(t["object_id"].to_pylist()) == sorted(ids[ew > 40])
        assert selection_record(t) == {"rows_without_value": 190, "rows": 240, "columns": ["ew_halpha"],
                                       "calibrated": False}
        p = select_targets(writable_catalog, prob="ew_halpha > 10", min_prob=0.5,
                           allow_missing=True).to_pandas()
        assert sorted(p.object_id) == sorted(ids[ew >= 10])  # P = 0.5 at ew = 10
        res = CliRunner().invoke(main, ["select", str(writable_catalog), "--prob", "ew_halpha > 10",
                                        "--allow-missing", "-o", str(writable_catalog.parent / "t.csv")])
        assert res.exit_code == 0, res.output
        assert "190 of 240 rows had no value for ew_halpha or ew_halpha_std and were left out" in res.output
        assert "UNCALIBRATED" in res.output
    finally:
        remove_extension(writable_catalog)


@pytest.mark.parametrize("args, message", [
    (["--where", "latnt_1 > 0"],
     "unknown column 'latnt_1' in --where 'latnt_1 > 0'. Did you mean 'latent_1'?"),
    (["--where", "latent_1 >"], "bad expression in --where 'latent_1 >': Parser Error"),
    (["--where", "latent_1 > 0; select 1"], "no ';'"),
    (["--where", "object_id in (select 1 from read_csv('/etc/passwd'))"], "tries to read a file"),
    (["--where", "object_id in (select 1 from read_parquet('/etc/*'))"], "file access is disabled"),
    (["--order-by", "latent_1; drop table x"], "bad --order-by"),
    (["--order-by", "latent_9 DESC"], "unknown column 'latent_9' in --order-by"),
    (["--prob", "latent_2 > 0.5", "--min-prob", "1.5"],
     "Invalid value for '--min-prob': 1.5 is not in the range 0<=x<=1"),
    (["--min-prob", "0.5"], "--min-prob needs --prob"),
    (["--prob", "mc_samples > 3"], "needs column 'mc_samples_std'"),
])
def test_cli_errors_are_one_line(writable_catalog, tmp_path, args, message):
    r = CliRunner().invoke(main, ["select", str(writable_catalog), *args, "--out", str(tmp_path / "t.csv")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galspec: error: ")
    assert message in lines[0]
    assert not (tmp_path / "t.csv").exists()


def test_cli_select_writes_targets(writable_catalog, df, tmp_path):
    out = tmp_path / "targets.fits"
    r = CliRunner().invoke(main, ["select", str(writable_catalog), "--where", "quality_flags = 0",
                                  "--rank", "uncertainty", "--limit", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "4 targets" in r.output
    t = Table.read(out)
    assert list(t.colnames[:4]) == ["object_id", "ra", "dec", "priority"] and len(t) == 4


def test_not_a_catalog(tmp_path):
    with pytest.raises(MissingFileError, match="is not a HATS catalog: it has no collection.properties"):
        select_targets(tmp_path)


def test_probability_in_a_calibrated_catalog_uses_the_t_shape(tiny_store, tmp_path):
    import hashlib

    from conftest import make_tiny_catalog, make_tiny_checkpoint
    from scipy import stats

    from galspec_batch.checkpoint import WEIGHTS_FILE, Calibration, save_calibration

    ckpt = make_tiny_checkpoint(tmp_path / "ck")
    model_hash = hashlib.sha256((ckpt / WEIGHTS_FILE).read_bytes()).hexdigest()
    targets = tuple(f"latent_{i}" for i in range(1, 7)) + ("z",)
    save_calibration(ckpt, Calibration(model_hash, targets, (1.0,) * 7, (3.0,) * 6 + (1000.0,), 16, 0, {}))
    cat = make_tiny_catalog(tiny_store, ckpt, tmp_path / "cat")
    table = select_targets(cat, prob="latent_2 > 0.5", min_prob=0.0)
    assert selection_record(table)["calibrated"] is True
    t = table.to_pandas()
    x, s = t.latent_2.to_numpy(np.float64), t.latent_2_std.to_numpy(np.float64)
    want = stats.t.cdf((x - 0.5) / s * stats.t.ppf(0.841345, 3), 3)
    np.testing.assert_allclose(t["prob"], want, rtol=1e-5, atol=1e-9)
    z = select_targets(cat, prob="z_phot < 0.5", min_prob=0.0).to_pandas()  # nu = 1000: the Gaussian
    np.testing.assert_allclose(z["prob"], norm.cdf((0.5 - z.z_phot) / z.z_phot_std), rtol=1e-5, atol=1e-9)


def test_every_written_column_is_described():
    from galspec_batch.columns import DERIVED_COLUMNS, describe_column

    assert describe_column("ew_halpha")[0] == describe_column("ew_halpha_std")[0] == "Angstrom"
    assert describe_column("ew_halpha_std")[0] == "Angstrom" and describe_column("dec")[0] == "deg"
    assert describe_column("z_phot_std_aleatoric")[1] == "aleatoric part of the 1-sigma of z_phot"
    assert describe_column("latent_12_std_epistemic")[1].endswith("of latent_12")
    names = ["object_id", "ra", "dec", "_healpix_29", "mc_samples", "quality_flags", "model_id", "z_phot",
             "prob", "priority", "spread", "latent_1", "latent_1_std", *DERIVED_COLUMNS]
    assert all(describe_column(n)[1] for n in names)
    assert describe_column("not_a_column") == (None, "") and describe_column("_std") == (None, "")
