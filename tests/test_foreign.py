"""galspec's tools on HATS catalogs it did not write: the same rows rewritten by lsdb
(``from_dataframe(...).to_hats``), or cut down to a few columns; each tool uses the columns it
needs and names any that is missing."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from conftest import make_tiny_catalog, make_tiny_checkpoint

from galspec_batch.anomalies import find_anomalies
from galspec_batch.calibrate import calibrate_catalog
from galspec_batch.catalog import read_catalog
from galspec_batch.errors import InputError, UsageError
from galspec_batch.select import select_targets


def _to_hats(df, path, name="other"):
    import lsdb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lsdb.from_dataframe(df, ra_column="ra", dec_column="dec", catalog_name=name).to_hats(
            path, progress_bar=False)
    return path


@pytest.fixture(scope="module")
def catalogs(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    ckpt = make_tiny_checkpoint(root / "ckpt")
    ours = make_tiny_catalog(tiny_store, ckpt, root / "ours", mc_samples=8)
    df = read_catalog(ours).to_pandas()
    theirs = _to_hats(df, root / "theirs")
    few = _to_hats(df[["object_id", "ra", "dec", "latent_1", "latent_1_std"]], root / "few", name="few")
    return ckpt, ours, theirs, few, df


def test_select_on_a_catalog_lsdb_wrote_equals_select_on_ours(catalogs):
    _, ours, theirs, few, df = catalogs
    assert not (theirs / "_state").exists() and (theirs / "collection.properties").exists()
    cut = float(df.latent_1.median())
    a = select_targets(ours, where=f"latent_1 > {cut}", rank="uncertainty").to_pandas()
    b = select_targets(theirs, where=f"latent_1 > {cut}", rank="uncertainty").to_pandas()
    assert len(a) == 120 and list(a.object_id) == list(b.object_id)
    np.testing.assert_array_equal(a.spread, b.spread)
    p = select_targets(few, prob=f"latent_1 > {cut}", min_prob=0.5).to_pandas()
    assert len(p) > 0 and set(p.object_id) <= set(a.object_id)
    with pytest.raises(UsageError, match="unknown column 'latent_2' in --where 'latent_2 > 0'"):
        select_targets(few, where="latent_2 > 0")


def test_anomalies_on_a_catalog_lsdb_wrote(catalogs, tmp_path):
    _, ours, theirs, _, df = catalogs
    a = find_anomalies(ours, tmp_path / "a.parquet")
    b = find_anomalies(theirs, tmp_path / "b.parquet")
    assert (a.n_objects, a.n_flagged) == (b.n_objects, b.n_flagged) and a.n_objects == 240
    no_std = _to_hats(df[["object_id", "ra", "dec", "latent_1", "latent_2", "latent_1_std"]],
                      tmp_path / "no_std", name="no_std")
    with pytest.raises(InputError, match=r"lacks columns \['latent_2_std'\]"):
        find_anomalies(no_std, tmp_path / "c.parquet")


def test_calibrate_a_catalog_lsdb_wrote_only_with_raw_spreads(catalogs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ckpt0, ours, theirs, few, df = catalogs
    rng = np.random.default_rng(0)
    cols = {"object_id": df.object_id.to_numpy()}
    for name in [f"latent_{i}" for i in range(1, 7)] + ["z_phot"]:
        value = df[name].to_numpy() + 2.0 * df[f"{name}_std"].to_numpy() * rng.standard_normal(len(df))
        cols["z" if name == "z_phot" else name] = np.abs(value) if name == "z_phot" else value
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table(cols), labels)
    ckpt = shutil.copytree(ckpt0, tmp_path / "ckpt")
    with pytest.raises(InputError, match="not written by galspec.*--raw-spreads"):
        calibrate_catalog(theirs, labels, ckpt, write=False)
    a = calibrate_catalog(ours, labels, ckpt, write=False)
    b = calibrate_catalog(theirs, labels, ckpt, write=False, raw_spreads=True)
    np.testing.assert_allclose(a.fit.scale, b.fit.scale, rtol=1e-6)
    with pytest.raises(InputError, match="has no column model_id"):
        calibrate_catalog(few, labels, ckpt, write=False, raw_spreads=True)
    other = make_tiny_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(InputError, match="has model_id"):
        calibrate_catalog(theirs, labels, other, write=False, raw_spreads=True)


def test_a_directory_that_is_no_catalog_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="is not a HATS catalog: it has no collection.properties"):
        select_targets(tmp_path / "empty", where="latent_1 > 0")


def test_decode_a_catalog_lsdb_wrote_equals_decode_of_ours(catalogs, tmp_path):
    import pyarrow.parquet as pq
    from test_decode import make_vae

    from galspec_batch.decode import decode_catalog

    _, ours, theirs, _, df = catalogs
    vae = make_vae(tmp_path / "vae")
    ids = df.object_id.to_numpy()[:5]
    decode_catalog(ours, vae, tmp_path / "a.parquet", ids=ids, n_draws=8)
    decode_catalog(theirs, vae, tmp_path / "b.parquet", ids=ids, n_draws=8)
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.num_rows == 5 and a.column_names == b.column_names
    assert a.select(["object_id", "flux_median", "ew_halpha"]).equals(b.select(["object_id", "flux_median",
                                                                                "ew_halpha"]))
    with pytest.raises(UsageError, match="--write-back adds an extension to a catalog galspec wrote"):
        decode_catalog(theirs, vae, tmp_path / "c.parquet", ids=ids, n_draws=8, write_back=True)
