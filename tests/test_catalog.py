"""The catalog writer against real readers (lsdb, hats, DuckDB, pandas), and its resume rules."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galspec_batch.catalog import (
    CatalogWriter,
    Outputs,
    catalog_schema,
    catalog_status,
    mark_failed,
    read_catalog,
    read_provenance,
    write_partition,
)
from galspec_batch.catalog import paths as cpaths
from galspec_batch.columns import QualityFlag
from galspec_batch.errors import IncompleteOutputError, InputError
from galspec_batch.options import Layout
from galspec_batch.sky import healpix_29, pixel_at_order

ORDER = 6
FINGERPRINT = "f00dcafe12345678"
PROVENANCE = {"model": {"name": "cnn-small", "sha256": "ab12"}, "store": "mock.zarr", "batch_size": 64}


def synthetic(n: int = 2000, seed: int = 0) -> pa.Table:
    """Random objects over 3 x 3 degrees, with the columns a runner would produce."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(150.0, 153.0, n)
    dec = rng.uniform(1.0, 4.0, n)
    cols = {"object_id": rng.choice(10**9, n, replace=False).astype(np.int64), "ra": ra, "dec": dec}
    for i in range(1, 7):
        cols[f"latent_{i}"] = rng.normal(size=n).astype(np.float32)
        cols[f"latent_{i}_std"] = rng.uniform(0, 0.1, n).astype(np.float32)
    cols["mc_samples"] = np.full(n, 16, np.int16)
    cols["quality_flags"] = rng.integers(0, 4, n).astype(np.uint16)
    cols["model_id"] = pa.array(["cnn-small"] * n).dictionary_encode()
    return pa.table(cols)


def pixels_and_rows(catalog_dir: Path) -> dict[tuple[int, int], int]:
    """(order, pixel) -> rows of every partition file of a HATS catalog, from the files themselves."""
    out = {}
    for f in (catalog_dir / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet"):
        o = int(f.parent.parent.name.split("=")[1])
        out[(o, int(f.stem.split("=")[1]))] = pq.read_metadata(f).num_rows
    return out


def sql(query: str) -> tuple:
    """The first row of a DuckDB query."""
    return duckdb.sql(query).fetchall()[0]


def split(table: pa.Table) -> dict[int, pa.Table]:
    """Rows by their partition pixel at ORDER (shuffled within, to check the writer sorts)."""
    pix = pixel_at_order(healpix_29(table["ra"].to_numpy(), table["dec"].to_numpy()), ORDER)
    return {int(p): table.filter(pa.array(pix == p)) for p in np.unique(pix)}


def begin(path: Path, parts: dict[int, pa.Table], **kw) -> CatalogWriter:
    plan = [(ORDER, p, t.num_rows) for p, t in parts.items()]
    kw = {"store_fingerprint": FINGERPRINT, "provenance": PROVENANCE, "model_id": "cnn-small", **kw}
    return CatalogWriter.begin(path, partition_order=ORDER, plan=plan, **kw)


def build(path: Path, table: pa.Table, **kw) -> tuple[CatalogWriter, dict[int, pa.Table]]:
    parts = split(table)
    cat = begin(path, parts, **kw)
    for p, t in parts.items():
        write_partition(path, ORDER, p, t)
    return cat, parts


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, pa.Table, dict]:
    path = tmp_path_factory.mktemp("cat") / "latents"
    table = synthetic()
    cat, _ = build(path, table, layout=Layout(partition_rows=150))  # a few merged partitions
    doc = cat.finalize()
    return path, table, doc


def test_schema_columns_types_and_flags():
    schema = catalog_schema(Outputs(6), [pa.field("latent_1_q16", pa.float32())])
    assert schema.names[:4] == ["object_id", "ra", "dec", "_healpix_29"]
    assert schema.names[4:10] == [f"latent_{i}" for i in range(1, 7)]
    assert schema.names[10:16] == [f"latent_{i}_std" for i in range(1, 7)]
    assert schema.names[16:] == ["mc_samples", "quality_flags", "model_id", "latent_1_q16"]
    # types astropy, VO-Parquet and TOPCAT accept: no unsigned 16-bit, no dictionary
    assert schema.field("quality_flags").type == pa.int32()
    assert schema.field("mc_samples").type == pa.int16()
    assert schema.field("model_id").type == pa.string()
    with pytest.raises(InputError, match="repeats"):
        catalog_schema(Outputs(6), [pa.field("ra", pa.float64())])
    assert [int(f) for f in QualityFlag] == [1, 2, 4, 8, 16, 32, 64, 128]
    # predictions (and only they) may be null: in a row flagged BAD_PREDICTION
    assert [f.name for f in schema if f.nullable] == schema.names[4:16] + ["latent_1_q16"]
    # a redshift and a gaussian head: z_phot after the latents, then every std, then their two parts
    full = catalog_schema(Outputs(2, redshift=True, parts=True))
    assert full.names[4:16] == ["latent_1", "latent_2", "z_phot",
                                "latent_1_std", "latent_2_std", "z_phot_std",
                                "latent_1_std_aleatoric", "latent_2_std_aleatoric", "z_phot_std_aleatoric",
                                "latent_1_std_epistemic", "latent_2_std_epistemic", "z_phot_std_epistemic"]
    with pytest.raises(InputError, match="n_latents must be an integer in"):
        Outputs(0)


def test_lsdb_cone_search_matches_brute_force(finished):
    import lsdb

    path, table, _ = finished
    ra0, dec0, radius_deg = 151.4, 2.6, 0.6
    got = lsdb.read_hats(path).cone_search(ra0, dec0, radius_deg * 3600).compute()
    ra, dec = np.radians(table["ra"].to_numpy()), np.radians(table["dec"].to_numpy())
    r0, d0 = np.radians(ra0), np.radians(dec0)
    hav = np.sin((dec - d0) / 2) ** 2 + np.cos(dec) * np.cos(d0) * np.sin((ra - r0) / 2) ** 2
    sep = np.degrees(2 * np.arcsin(np.sqrt(hav)))
    want = np.sort(table["object_id"].to_numpy()[sep < radius_deg])
    assert 100 < want.size < table.num_rows
    np.testing.assert_array_equal(np.sort(got["object_id"].to_numpy()), want)
    row = got.iloc[0]
    src = table.filter(pa.compute.equal(table["object_id"], int(row["object_id"]))).to_pylist()[0]
    assert row["latent_3"] == pytest.approx(src["latent_3"])
    assert row["model_id"] == "cnn-small"


def test_hats_reads_it_and_partition_info_matches(finished):
    import hats
    from hats.io.validation import is_valid_catalog

    path, table, _ = finished
    cat = hats.read_hats(path).main_catalog
    pixels = {(p.order, p.pixel) for p in cat.get_healpix_pixels()}
    # the store's partitions merged into their parents while together at most 150 rows
    rows = {px: n for px, n in pixels_and_rows(path / "latents").items()}
    assert set(rows) == pixels and sum(rows.values()) == table.num_rows
    assert all(n <= 150 for (o, _), n in rows.items() if o < ORDER)  # a larger store partition stays whole
    assert len(pixels) < len(split(table)) and min(o for o, _ in pixels) < ORDER
    assert cat.catalog_info.total_rows == table.num_rows
    assert cat.catalog_info.ra_column == "ra" and cat.catalog_info.healpix_column == "_healpix_29"
    info = pd.read_csv(path / "latents" / "partition_info.csv")
    assert list(info.columns) == ["Norder", "Npix"]
    assert set(zip(info.Norder, info.Npix, strict=True)) == pixels
    assert is_valid_catalog(path / "latents", strict=True)


def test_duckdb_counts_and_where(finished):
    path, table, _ = finished
    files = f"read_parquet('{path}/latents/dataset/**/*.parquet', hive_partitioning=false)"
    n, n_ids = sql(f"SELECT count(*), count(DISTINCT object_id) FROM {files}")
    assert n == n_ids == table.num_rows
    flags = table["quality_flags"].to_numpy()
    (n_missing,) = sql(f"SELECT count(*) FROM {files} WHERE quality_flags & 2 != 0")
    assert n_missing == int(((flags & QualityFlag.MISSING_BAND) != 0).sum())
    (mean,) = sql(f"SELECT avg(latent_2) FROM {files} WHERE dec > 2.5")
    sel = table["dec"].to_numpy() > 2.5
    assert mean == pytest.approx(table["latent_2"].to_numpy()[sel].astype(np.float64).mean(), rel=1e-6)


def test_pandas_reads_a_partition_sorted(finished):
    path, table, _ = finished
    (o, p), n = max(pixels_and_rows(path / "latents").items(), key=lambda kv: kv[1])
    df = pd.read_parquet(cpaths.primary_dir(path) / "dataset" / cpaths.partition_relpath(o, p))
    assert len(df) == n
    assert df["_healpix_29"].is_monotonic_increasing
    assert df["latent_1"].dtype == np.float32 and df["quality_flags"].dtype == np.int32
    inside = pixel_at_order(healpix_29(table["ra"].to_numpy(), table["dec"].to_numpy()), o) == p
    assert set(df["object_id"]) == set(table["object_id"].to_numpy()[inside])


def test_provenance_in_schema_metadata_and_json(finished):
    path, table, doc = finished
    for f in ("_metadata", "_common_metadata"):
        meta = json.loads(pq.read_schema(path / "latents" / "dataset" / f).metadata[b"galspec"])
        assert meta["provenance"] == PROVENANCE
        assert meta["store_fingerprint"] == FINGERPRINT and meta["n_objects"] == table.num_rows
    part = next(path.glob("latents/dataset/Norder=*/Dir=*/*.parquet"))
    assert json.loads(pq.read_schema(part).metadata[b"galspec"])["model_id"] == "cnn-small"
    assert read_provenance(path) == doc
    assert doc["quality_flags"] == {
        "NAN_PIXELS": 1,
        "MISSING_BAND": 2,
        "LOW_COVERAGE": 4,
        "OUT_OF_DISTRIBUTION": 8,
        "INF_PIXELS": 16,
        "CONSTANT_BAND": 32,
        "EXTREME_PIXELS": 64,
        "BAD_PREDICTION": 128,
    }
    got = read_catalog(path, ["object_id", "latent_6"]).sort_by("object_id")
    want = table.select(["object_id", "latent_6"]).sort_by("object_id")
    assert got.to_pydict() == want.to_pydict()
    status = catalog_status(path).to_dict()
    assert status["complete"] and status["done"] == status["planned"] and status["pending"] == 0
    assert status["objects_done"] == status["objects_planned"] == table.num_rows


def test_truncated_and_unmarked_files_are_redone(tmp_path):
    path = tmp_path / "cat"
    cat, parts = build(path, synthetic(600, seed=1))
    p_cut, p_unmarked, p_dead = sorted(parts)[:3]
    f = cpaths.work_file(path, ORDER, p_cut)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a crash mid-copy
    cpaths.done_marker(path, ORDER, p_unmarked).unlink()  # killed between file and marker
    cpaths.done_marker(path, ORDER, p_dead).unlink()
    cpaths.work_file(path, ORDER, p_dead).rename(
        cpaths.work_file(path, ORDER, p_dead).with_name(f"p{p_dead}.parquet.tmp-deadbeef")
    )  # killed mid-write
    assert catalog_status(path).to_dict()["done"] == len(parts) - 3
    with pytest.raises(IncompleteOutputError, match=f"Npix={p_cut}"):
        cat.finalize()
    cat = begin(path, parts)  # a rerun resumes
    assert sorted(cat.pending()) == [(ORDER, p) for p in sorted([p_cut, p_unmarked, p_dead])]
    assert not f.exists() and not list(path.glob("_state/parts/**/*.tmp-*"))
    assert cat.pending() == sorted(cat.pending())  # idempotent, nothing else is touched
    for p in (p_cut, p_unmarked, p_dead):
        write_partition(path, ORDER, p, parts[p])
    assert cat.pending() == []
    doc = cat.finalize()
    assert doc["n_objects"] == 600 and len(doc["resumes"]) == 1
    assert sql(f"SELECT count(DISTINCT object_id) FROM '{path}/latents/dataset/**/*.parquet'") == (600,)


def test_changed_store_and_finished_catalog_are_refused(tmp_path):
    path = tmp_path / "cat"
    cat, parts = build(path, synthetic(300, seed=2))
    with pytest.raises(InputError, match=r"store 0000 changed since the catalog began.*f00dcafe12345678"):
        begin(path, parts, store_fingerprint="0000")
    with pytest.raises(InputError, match="model 'cnn-small', not 'other'"):
        begin(path, parts, model_id="other")
    with pytest.raises(InputError, match="another plan"):
        begin(path, dict(list(parts.items())[1:]))
    cat.finalize()
    again = begin(path, parts)  # a finished catalog is verified, not refused: whole, nothing to do
    assert again.complete and not again.repairs and again.pending() == []
    with pytest.raises(InputError, match="is complete"):
        write_partition(path, ORDER, next(iter(parts)), next(iter(parts.values())))
    fresh = begin(path, parts, store_fingerprint="0000", overwrite=True)
    assert len(fresh.pending()) == len(parts) and not (path / "collection.properties").exists()


def test_duplicate_ids_across_partitions_refused_at_finalize(tmp_path):
    path = tmp_path / "cat"
    parts = split(synthetic(300, seed=3))
    (pa_, ta), (pb, tb) = list(parts.items())[:2]
    dup_id = ta["object_id"][0].as_py()
    ids = tb["object_id"].to_numpy().copy()
    ids[0] = dup_id
    parts[pb] = tb.set_column(0, "object_id", pa.array(ids))
    cat = begin(path, parts)
    for p, t in parts.items():
        write_partition(path, ORDER, p, t)
    with pytest.raises(
        IncompleteOutputError, match=rf"object_id {dup_id} .*Npix={min(pa_, pb)}.*Npix={max(pa_, pb)}"
    ):
        cat.finalize()
    assert not (path / "collection.properties").exists()


def test_write_partition_refuses_bad_rows(tmp_path):
    path = tmp_path / "cat"
    parts = split(synthetic(300, seed=4))
    begin(path, parts)
    (p, t), (q, _) = sorted(parts.items(), key=lambda kv: -kv[1].num_rows)[:2]
    with pytest.raises(InputError, match="outside the partition"):
        write_partition(path, ORDER, q, t)
    with pytest.raises(InputError, match="expected"):
        write_partition(path, ORDER, p, t.slice(1))  # a dropped object
    with pytest.raises(InputError, match="Did you mean 'latent_1_std'"):
        write_partition(path, ORDER, p, t.append_column("latent_1_sdt", t["latent_1"]))
    with pytest.raises(InputError, match="this catalog is made by 'cnn-small'"):
        bad = pa.array(["other"] * t.num_rows).dictionary_encode()
        write_partition(path, ORDER, p, t.set_column(t.schema.get_field_index("model_id"), "model_id", bad))
    with pytest.raises(InputError, match="ra/dec give"):
        hp = healpix_29(t["ra"].to_numpy(), t["dec"].to_numpy())
        write_partition(path, ORDER, p, t.append_column("_healpix_29", pa.array(hp[::-1].copy())))
    # pandas input, float64 latents, no _healpix_29: cast and computed
    df = t.to_pandas()
    df["latent_1"] = df["latent_1"].astype(np.float64)
    out = write_partition(path, ORDER, p, df)
    back = pq.read_table(out)
    assert back.schema.remove_metadata().equals(catalog_schema(Outputs(6)))
    np.testing.assert_array_equal(
        back["_healpix_29"].to_numpy(), np.sort(healpix_29(t["ra"].to_numpy(), t["dec"].to_numpy()))
    )


def test_failures_show_in_status_and_clear_on_retry(tmp_path):
    path = tmp_path / "cat"
    parts = split(synthetic(300, seed=5))
    begin(path, parts)
    (p, t), *_ = parts.items()
    mark_failed(path, ORDER, p, RuntimeError("CUDA out of memory"))
    s = catalog_status(path).to_dict()
    assert (s["done"], s["failed"], s["pending"]) == (0, 1, len(parts) - 1)
    assert s["failures"] == {f"Norder={ORDER} Npix={p}": "RuntimeError: CUDA out of memory"}
    from click.testing import CliRunner

    from galspec_batch.cli import main

    out = CliRunner().invoke(main, ["status", str(path)])
    assert out.exit_code == 0 and "CUDA out of memory" in out.output
    out = CliRunner().invoke(main, ["status", str(path), "--json"])
    got = json.loads(out.output)
    assert (got["done"], got["pending"], got["failed"]) == (0, len(parts) - 1, 1)
    write_partition(path, ORDER, p, t)
    s = catalog_status(path).to_dict()
    assert (s["done"], s["failed"], s["objects_done"]) == (1, 0, t.num_rows)


def test_concurrent_writers_of_different_partitions(tmp_path):
    path = tmp_path / "cat"
    table = synthetic(1500, seed=6)
    parts = split(table)
    cat = begin(path, parts)
    items = list(parts.items())
    errors = []

    def work(chunk):
        try:
            for p, t in chunk:
                write_partition(path, ORDER, p, t)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(items[i::3],)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and cat.pending() == []
    assert cat.finalize()["n_objects"] == table.num_rows
