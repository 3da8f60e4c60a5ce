"""The published HATS collection against the survey ecosystem's own readers: lsdb (crossmatch at
partition borders, coverage plot, extension join), hats' strict validators, astropy and VO-Parquet;
and its integrity: damage found and repaired, a new layout published again."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_catalog import ORDER, begin, build, pixels_and_rows, split, synthetic

from galspec_batch.catalog import paths as cpaths
from galspec_batch.catalog import read_catalog, verify_catalog
from galspec_batch.catalog.extension import write_extension
from galspec_batch.columns import OBJECT_ID
from galspec_batch.options import Layout
from galspec_batch.sky import healpix_29, pixel_at_order

N = 4000
JITTER_ARCSEC = 8.0
RADIUS_ARCSEC = 10.0  # the default margin


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic(N, seed=7)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, table) -> Path:
    path = tmp_path_factory.mktemp("col") / "survey"
    cat, _ = build(path, table, layout=Layout(partition_rows=300))
    cat.finalize()
    return path


def _other_survey(table: pa.Table, seed: int = 8) -> pd.DataFrame:
    """Every object again, moved by up to JITTER_ARCSEC in a random direction: another survey."""
    rng = np.random.default_rng(seed)
    r = JITTER_ARCSEC / 3600 * np.sqrt(rng.uniform(0, 1, table.num_rows))
    theta = rng.uniform(0, 2 * np.pi, table.num_rows)
    dec = table["dec"].to_numpy() + r * np.sin(theta)
    ra = table["ra"].to_numpy() + r * np.cos(theta) / np.cos(np.radians(dec))
    return pd.DataFrame({"other_id": np.arange(table.num_rows), "ra": ra, "dec": dec})


def _brute_force(other: pd.DataFrame, table: pa.Table) -> dict[int, int]:
    """other_id -> object_id of the nearest object within RADIUS_ARCSEC."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    ours = SkyCoord(table["ra"].to_numpy() * u.deg, table["dec"].to_numpy() * u.deg)
    theirs = SkyCoord(other["ra"].to_numpy() * u.deg, other["dec"].to_numpy() * u.deg)
    idx, sep, _ = theirs.match_to_catalog_sky(ours)
    ok = sep.arcsec < RADIUS_ARCSEC
    ids = table["object_id"].to_numpy()
    return dict(zip(other["other_id"].to_numpy()[ok].tolist(), ids[idx[ok]].tolist(), strict=True))


def _crossmatch(other: pd.DataFrame, path: Path) -> dict[int, int]:
    import lsdb

    left = lsdb.from_dataframe(other, ra_column="ra", dec_column="dec", lowest_order=2, highest_order=8,
                               partition_rows=500)
    m = left.crossmatch(lsdb.open_catalog(path), radius_arcsec=RADIUS_ARCSEC, n_neighbors=1).compute()
    return dict(zip(m[f"other_id_{left.name}"].tolist(), m["object_id_latents"].tolist(), strict=True))


def test_crossmatch_at_partition_borders_equals_brute_force(collection, table, tmp_path):
    other = _other_survey(table)
    want = _brute_force(other, table)
    got = _crossmatch(other, collection)
    assert got == want and len(want) == N
    # the pairs that straddle a border between two of the catalog's partitions are all there
    pixels = pixels_and_rows(collection / "latents")
    orders = sorted({o for o, _ in pixels})
    hp_other = healpix_29(other["ra"].to_numpy(), other["dec"].to_numpy())
    hp_ours = dict(zip(table["object_id"].to_numpy().tolist(),
                       healpix_29(table["ra"].to_numpy(), table["dec"].to_numpy()).tolist(), strict=True))

    def home(hp29: int) -> tuple[int, int]:
        return next((o, int(pixel_at_order(np.array([hp29]), o)[0])) for o in orders
                    if (o, int(pixel_at_order(np.array([hp29]), o)[0])) in pixels)

    straddle = [i for i, oid in want.items() if home(int(hp_other[i])) != home(hp_ours[oid])]
    assert len(straddle) >= 5
    # before: the same catalog without a margin cache misses exactly such pairs
    bare = tmp_path / "bare"
    cat, _ = build(bare, table, layout=Layout(partition_rows=300, margin_arcsec=0))
    cat.finalize()
    with pytest.warns(Warning, match="margin"):
        missed = set(want) - set(_crossmatch(other, bare))
    assert missed and missed <= set(straddle)


def test_collection_and_margin_are_strictly_valid(collection, table):
    from hats.io.validation import is_valid_catalog, is_valid_collection

    props = (collection / "collection.properties").read_text()
    assert "hats_primary_table_url=latents" in props and "default_margin=latents_10arcs" in props
    assert is_valid_collection(collection, strict=True)
    assert is_valid_catalog(collection / "latents_10arcs", strict=True)
    margin = (collection / "latents_10arcs" / "hats.properties").read_text()
    assert "dataproduct_type=margin" in margin and "hats_margin_threshold=10.0" in margin
    # every margin row lies outside its partition, within one ring of higher-order pixels of it
    rows = pq.ParquetDataset(collection / "latents_10arcs" / "dataset").read().to_pandas()
    assert 0 < len(rows) < N and set(rows["object_id"]) <= set(table["object_id"].to_pylist())
    assert (collection / "latents" / "point_map.fits").exists()
    assert (collection / "latents" / "skymap.fits").exists()
    stats = pq.read_table(collection / "latents" / "per_partition_statistics.parquet")
    assert stats.num_rows == len(pixels_and_rows(collection / "latents"))


def test_lsdb_moc_and_plot_coverage(collection):
    import lsdb
    import matplotlib

    matplotlib.use("Agg")
    cat = lsdb.open_catalog(collection)
    assert cat.margin is not None and cat.margin.hc_structure.catalog_info.margin_threshold == 10.0
    moc = cat.hc_structure.moc
    import astropy.units as u

    assert moc.contains_lonlat([151.5] * u.deg, [2.5] * u.deg)[0]  # inside the data
    assert not moc.contains_lonlat([10.0] * u.deg, [-40.0] * u.deg)[0]
    assert 0 < moc.sky_fraction < 1e-3
    fig, ax = cat.plot_coverage()
    assert len(ax.patches) == 1  # the MOC, drawn
    matplotlib.pyplot.close(fig)


def test_astropy_and_vo_parquet_read_units(collection):
    from astropy.io.votable import parse
    from astropy.table import Table

    f = next((collection / "latents" / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no guessing: the width of model_id is in the file
        t = Table.read(f)
    assert str(t["ra"].unit) == "deg" and t["latent_2_std"].description.startswith("standard deviation")
    assert t["quality_flags"].dtype == np.int32 and t["model_id"][0] == "cnn-small"
    field = pq.read_schema(f).field("dec")
    assert field.metadata[b"unit"] == b"deg" and field.metadata[b"ucd"] == b"pos.eq.dec;meta.main"
    meta = pq.read_schema(collection / "latents" / "dataset" / "_common_metadata").metadata
    assert meta[b"IVOA.VOTable-Parquet.version"] == b"1.0"
    vo = parse(io.BytesIO(meta[b"IVOA.VOTable-Parquet.content"])).get_first_table()
    fields = {fl.name: fl for fl in vo.fields}
    assert fields["ra"].unit == "deg" and fields["latent_1"].datatype == "float"
    assert fields["quality_flags"].datatype == "int" and fields["model_id"].arraysize == "*"


def test_damaged_published_file_is_found_and_republished(tmp_path, table):
    path = tmp_path / "cat"
    small = table.slice(0, 800)
    cat, parts = build(path, small, layout=Layout(partition_rows=300))
    cat.finalize()
    victim = next((path / "latents" / "dataset").glob("Norder=*/Dir=*/*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-100])
    (path / "latents_10arcs" / "partition_info.csv").unlink()
    problems = verify_catalog(path)
    assert any(str(victim) in p for p in problems) and any("partition_info.csv" in p for p in problems)
    with pytest.raises(Exception, match="rerun `galspec predict`"):
        read_catalog(path, [OBJECT_ID])
    again = begin(path, parts, layout=Layout(partition_rows=300))  # the rerun: nothing to predict
    assert not again.complete and again.pending() == [] and again.metadata_problems
    again.finalize()
    assert verify_catalog(path) == []
    got = read_catalog(path, [OBJECT_ID])[OBJECT_ID].to_pylist()
    assert sorted(got) == sorted(small[OBJECT_ID].to_pylist())


def test_new_layout_is_published_again(tmp_path, table):
    path = tmp_path / "cat"
    small = table.slice(0, 800)
    cat, parts = build(path, small, layout=Layout(partition_rows=100))
    cat.finalize()
    assert len(pixels_and_rows(path / "latents")) > 2
    same = begin(path, parts)  # a rerun that names no layout keeps the recorded one
    assert same.complete and not same.metadata_problems and same.state.layout["partition_rows"] == 100
    again = begin(path, parts, layout=Layout(partition_rows=10_000, margin_arcsec=5))
    assert not again.complete and again.pending() == []
    doc = again.finalize()
    assert doc["layout"] == {"partition_rows": 10_000, "margin_arcsec": 5.0}
    assert len(pixels_and_rows(path / "latents")) == 1 and (path / "latents_5arcs").is_dir()
    assert not (path / "latents_10arcs").exists()


def test_default_layout_gives_few_files(tmp_path, table):
    path = tmp_path / "cat"
    cat, parts = build(path, table)
    cat.finalize()
    assert len(parts) > 8 and len(pixels_and_rows(path / "latents")) == 1  # 4000 rows: one file


def test_derived_extension_joins_in_lsdb_and_is_not_double_counted(collection, table):
    import lsdb

    rng = np.random.default_rng(1)
    ids = table[OBJECT_ID].to_numpy()[::3]
    derived = pa.table({OBJECT_ID: ids, "ew_halpha": rng.normal(size=len(ids)).astype(np.float32),
                        "ew_halpha_std": np.full(len(ids), 0.5, np.float32)})
    write_extension(collection, derived, {b"test": b"1"})
    cat = lsdb.open_catalog(collection)
    assert cat.all_extensions == {"derived": "derived.properties"}
    joined = cat.load_extension("derived").compute()
    assert len(joined) == N and joined["ew_halpha"].notna().sum() == len(ids)
    got = joined.dropna(subset=["ew_halpha"]).set_index("object_id")["ew_halpha"]
    want = pd.Series(derived["ew_halpha"].to_numpy(), index=ids)
    assert np.allclose(got.loc[ids].to_numpy(), want.to_numpy())
    # the primary's files alone hold each object once; the extension is a catalog of its own
    (n,) = duckdb.sql(f"SELECT count(*) FROM '{collection}/latents/dataset/**/*.parquet'").fetchall()[0]
    assert n == N
    from hats.io.validation import is_valid_catalog

    assert is_valid_catalog(collection / "derived", strict=True)
    assert verify_catalog(collection) == []


def test_store_partitions_are_the_unit_of_resume(collection, table):
    # the run's own files stay one per store partition, apart from what HATS readers see
    work = sorted((collection / cpaths.STATE_DIR / cpaths.PARTS_DIR).rglob("*.parquet"))
    assert len(work) == len(split(table)) and all(f"o{ORDER}" in str(f) for f in work)


def test_the_million_cutout_benchmark_publishes_a_handful_of_files():
    from galspec_batch.catalog.layout import merge_plan

    # bench/bench_million.py's sky: a million objects over ra 0-40, dec +-20, a store at order 5
    rng = np.random.default_rng(0)
    n = 1_000_000
    ra = rng.uniform(0, 40, n)
    dec = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-20)), np.sin(np.radians(20)), n)))
    pixels, counts = np.unique(pixel_at_order(healpix_29(ra, dec), 5), return_counts=True)
    rows = dict(zip(pixels.tolist(), counts.tolist(), strict=True))
    groups = merge_plan(rows, 5, Layout().resolved().partition_rows)
    assert len(rows) == 525 and len(groups) == 8  # was 525 files of ~1,900 rows
    sizes = [sum(rows[p] for p in members) for members in groups.values()]
    assert sum(sizes) == n and max(sizes) <= 250_000 and min(sizes) > 50_000
    # every store partition lies inside its destination pixel
    for (o, p), members in groups.items():
        assert all(m >> (2 * (5 - o)) == p for m in members)


def test_layout_options_on_the_command_line(tiny_store, tiny_checkpoint, tmp_path):
    from click.testing import CliRunner

    from galspec_batch.cli import main
    from galspec_batch.errors import UsageError

    out = tmp_path / "cat"
    args = ["predict", "--store", str(tiny_store), "--checkpoint", str(tiny_checkpoint), "-o", str(out),
            "--cluster", "none", "--engine", "eager", "--mc-samples", "4", "--quiet"]
    res = CliRunner().invoke(main, [*args, "--partition-rows", "60", "--margin-arcsec", "5"])
    assert res.exit_code == 0, res.output
    rows = pixels_and_rows(out / "latents")
    merged = {px: n for px, n in rows.items() if px[0] < 4}  # the tiny store is at order 4
    assert merged and max(merged.values()) <= 60 and sum(rows.values()) == 240
    assert (out / "latents_5arcs" / "hats.properties").exists()
    res = CliRunner().invoke(main, [*args, "--margin-arcsec", "-1"])
    assert res.exit_code == 2 and "Invalid value for '--margin-arcsec'" in res.output
    parts = split(synthetic(300, seed=5))
    with pytest.raises(UsageError, match="--margin-arcsec 3600 is as wide"):
        begin(tmp_path / "other", parts, layout=Layout(margin_arcsec=3600))


@pytest.fixture
def small(tmp_path, table) -> Path:
    path = tmp_path / "cat"
    cat, _ = build(path, table.slice(0, 800), layout=Layout(partition_rows=300))
    cat.finalize()
    return path


@pytest.mark.parametrize("damage", ["short partition_info", "extra partition", "pointer", "extra derived"])
def test_a_changed_collection_is_found_by_verify_and_refused_by_readers(small, damage):
    from galspec_batch.errors import GalspecError
    from galspec_batch.select import select_targets

    ids = read_catalog(small, [OBJECT_ID])[OBJECT_ID]
    write_extension(small, pa.table({OBJECT_ID: ids, "ew_halpha": np.ones(len(ids), np.float32)}), {})
    data = small / "latents" / "dataset"
    if damage == "short partition_info":  # a reader trusting it would serve part of the catalog
        info = small / "latents" / "partition_info.csv"
        info.write_text("".join(info.read_text().splitlines(keepends=True)[:2]))
    elif damage == "extra partition":  # a DuckDB glob would count its rows twice
        f = next(data.glob("Norder=*/Dir=*/*.parquet"))
        (f.parent / "Npix=99999.parquet").write_bytes(f.read_bytes())
    elif damage == "pointer":  # the collection names its margin as the primary
        props = small / "collection.properties"
        props.write_text(props.read_text().replace("hats_primary_table_url=latents", "hats_primary_table_url="
                                                   "latents_10arcs"))
    else:  # a file dropped into the extension
        f = next((small / "derived" / "dataset").glob("Norder=*/Dir=*/*.parquet"))
        (f.parent / "Npix=99999.parquet").write_bytes(f.read_bytes())
    assert verify_catalog(small), damage
    if damage == "extra partition":  # galspec reads only the published files: found, not served
        assert "was not published by finalize" in verify_catalog(small)[0]
        assert select_targets(small, where="latent_1 > -100").num_rows == 800
        return
    with pytest.raises(GalspecError):
        select_targets(small, where="latent_1 > -100", region="cone:151.5,2.5,0.5")


def test_a_catalog_inside_a_collection_is_not_read_past_its_checks(small, table):
    from galspec_batch.errors import InputError
    from galspec_batch.select import select_targets

    for part in ("latents", "latents_10arcs"):
        with pytest.raises(InputError, match=f"{part} is part of the galspec catalog"):
            select_targets(small / part, where="latent_1 > 0")
    with pytest.raises(InputError, match="1 object ids are not in the catalog"):
        write_extension(small, pa.table({OBJECT_ID: [123], "ew_halpha": [1.0]}), {})


def test_empty_sky_is_hats_negative_tree():
    from hats.pixel_math import HealpixPixel
    from hats.pixel_tree.negative_tree import compute_negative_tree_pixels
    from hats.pixel_tree.pixel_tree import PixelTree

    from galspec_batch.catalog.layout import empty_sky

    rng = np.random.default_rng(1)
    coarse = {int(p) for p in rng.integers(0, 12 * 4**3, 5)}
    fine = {int(p) for p in rng.integers(0, 12 * 4**6, 60) if int(p) >> 6 not in coarse}
    parts = [(3, p) for p in coarse] + [(6, p) for p in fine]
    tree = PixelTree.from_healpix([HealpixPixel(o, p) for o, p in parts])
    want = sorted((px.order, px.pixel) for px in compute_negative_tree_pixels(tree))
    assert sorted(empty_sky(parts)) == want and len(want) > 100
    assert sorted(empty_sky([])) == [(0, p) for p in range(12)]


def test_margin_pairs_are_hats_get_margin():
    from hats.pixel_math import get_margin

    from galspec_batch.catalog.layout import empty_sky, margin_pairs

    rng = np.random.default_rng(2)
    parts = [(3, int(p)) for p in rng.integers(0, 12 * 4**3, 4)] + [(0, 11), (5, 12 * 4**5 - 1)]
    for order in (6, 10):
        want = {(m, o, p) for o, p in [*parts, *empty_sky(parts)] for m in get_margin(o, p, order - o)}
        got = margin_pairs(parts, order)
        assert len(got) == len(want) > 1000
        assert set(map(tuple, got[["margin_pixel", "order", "pixel"]].to_numpy().tolist())) == want
