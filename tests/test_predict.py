"""The batch runner end to end: a store in, a HATS catalog out, read by lsdb, DuckDB and pandas."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import duckdb
import lsdb
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_checkpoint, make_tiny_store

from galspec_batch.catalog import read_catalog, read_provenance
from galspec_batch.catalog.paths import done_marker, work_file
from galspec_batch.cli import main
from galspec_batch.columns import QualityFlag
from galspec_batch.errors import InputError
from galspec_batch.options import PredictOptions
from galspec_batch.predict import begin_catalog, predict_catalog
from galspec_batch.store import append_objects, open_store

LATENTS = [f"latent_{i}" for i in range(1, 7)] + ["z_phot"]  # every predicted column
STDS = [f"{c}_std" for c in LATENTS]
PARTS = [f"{c}_std_{part}" for part in ("aleatoric", "epistemic") for c in LATENTS]


def _frame(path) -> pd.DataFrame:
    return read_catalog(path).to_pandas().sort_values("object_id").reset_index(drop=True)


def test_every_object_exactly_once_with_uncertainty(tiny_catalog, tiny_store):
    df = _frame(tiny_catalog)
    store = open_store(tiny_store)
    assert sorted(df.object_id) == sorted(store.object_id.tolist())
    assert df[STDS].gt(0).all().all()
    # the total spread is the aleatoric (the head's variance) and epistemic (MC) parts in quadrature
    ale, epi = df[PARTS[:7]].to_numpy(), df[PARTS[7:]].to_numpy()
    np.testing.assert_allclose(df[STDS].to_numpy() ** 2, ale**2 + epi**2, rtol=1e-5)
    assert (ale > 0).all() and (epi > 0).all()
    assert read_provenance(tiny_catalog)["provenance"]["calibrated"] is False
    assert (df.mc_samples == 16).all()
    assert df.model_id.str.startswith("simple-cnn@").all()
    flags = df.set_index("object_id").quality_flags
    assert flags[1003] & QualityFlag.NAN_PIXELS and flags[1005] & QualityFlag.MISSING_BAND
    assert (flags.drop([1003, 1005]) == 0).all()


def test_lsdb_cone_search_and_duckdb(tiny_catalog):
    cat = lsdb.read_hats(tiny_catalog)
    got = cat.cone_search(ra=153.0, dec=0.0, radius_arcsec=1.5 * 3600).compute()
    df = _frame(tiny_catalog)
    d = np.degrees(np.arccos(np.clip(
        np.sin(np.radians(df.dec)) * np.sin(0.0)
        + np.cos(np.radians(df.dec)) * np.cos(np.radians(df.ra - 153.0)), -1, 1)))
    assert sorted(got.object_id) == sorted(df.object_id[d <= 1.5])
    con = duckdb.connect()
    n, mean1 = con.execute(
        f"select count(*), avg(latent_1) from read_parquet('{tiny_catalog}/latents/dataset/**/*.parquet')"
    ).fetchone()
    assert n == len(df) and mean1 == pytest.approx(df.latent_1.mean(), rel=1e-5)


def test_rerun_is_bit_identical_and_dask_matches(tiny_catalog, tiny_store, tiny_checkpoint, tmp_path):
    out = tmp_path / "dask"
    predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(mc_samples=16, engine="eager",
                    batch_size=7), cluster="local", n_workers=2, progress=False)
    a, b = _frame(tiny_catalog), _frame(out)
    pd.testing.assert_frame_equal(a[["object_id", *LATENTS, *STDS]], b[["object_id", *LATENTS, *STDS]])


def test_only_runs_a_share_and_resume_finishes(tiny_store, tiny_checkpoint, tmp_path):
    out = tmp_path / "share"
    parts = open_store(tiny_store).partitions()
    first = [p.pixel for p in parts[:3]]
    begin_catalog(tiny_store, tiny_checkpoint, out,
                  PredictOptions(engine="eager"))  # as `galspec submit` does
    s1 = predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(engine="eager"), cluster="none",
                         only=first, progress=False)
    assert s1.partitions_done == 3 and not (out / "collection.properties").exists()
    kept = work_file(out, parts[0].order, parts[0].pixel)
    mtime = kept.stat().st_mtime_ns
    s2 = predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(engine="eager"), cluster="none",
                         progress=False)
    assert (s2.partitions_done, s2.partitions_skipped) == (len(parts) - 3, 3)
    assert kept.stat().st_mtime_ns == mtime and (out / "collection.properties").exists()
    assert _frame(out).object_id.is_unique and len(_frame(out)) == 240


def test_resume_after_interrupt_and_truncated_file(tiny_store, tiny_checkpoint, tmp_path):
    out = tmp_path / "interrupted"
    s_full = predict_catalog(tiny_store, tiny_checkpoint, tmp_path / "ref", PredictOptions(engine="eager"),
                             cluster="none", progress=False)
    parts = open_store(tiny_store).partitions()
    # simulate an interrupted first run: the whole plan, but stop before finalize
    predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(engine="eager"), cluster="none",
                    progress=False, finalize=False)
    kept = work_file(out, parts[0].order, parts[0].pixel)
    mtime = kept.stat().st_mtime_ns
    broken = work_file(out, parts[1].order, parts[1].pixel)
    broken.write_bytes(broken.read_bytes()[:200])  # a crash mid-write of an unmarked file
    done_marker(out, parts[1].order, parts[1].pixel).unlink()
    unmarked = parts[2]
    done_marker(out, unmarked.order, unmarked.pixel).unlink()
    s = predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(engine="eager"), cluster="none",
                        progress=False)
    assert s.partitions_done == 2 and s.partitions_skipped == len(parts) - 2
    assert kept.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(_frame(out), _frame(tmp_path / "ref"))
    assert s_full.objects == len(_frame(out))


def test_store_changed_since_catalog_began_is_refused(tmp_path, tiny_checkpoint):
    store = make_tiny_store(tmp_path / "s.zarr", n=60)
    out = tmp_path / "cat"
    parts = open_store(store).partitions()
    predict_catalog(store, tiny_checkpoint, out, PredictOptions(engine="eager",
                    partitions=[parts[0].pixel]), cluster="none", progress=False, finalize=False)
    append_objects(open_store(store), [99999], [151.0], [0.5], np.ones((1, 5, 16, 16), np.float32))
    with pytest.raises(InputError, match="changed since the catalog began"):
        predict_catalog(store, tiny_checkpoint, out, PredictOptions(engine="eager",
                        partitions=[parts[0].pixel]), cluster="none", progress=False, finalize=False)


def test_checkpoint_bands_must_match_store(tmp_path, tiny_checkpoint):
    from galspec_batch.store import create_store

    with create_store(tmp_path / "ugriz.zarr", bands=tuple("ugriz"), image_shape=(16, 16)) as w:
        w.append([1], [10.0], [0.0], np.zeros((1, 5, 16, 16), np.float32))
    with pytest.raises(InputError, match="trained on bands grizy but store .*ugriz.zarr has ugriz"):
        predict_catalog(tmp_path / "ugriz.zarr", tiny_checkpoint, tmp_path / "c", cluster="none",
                        progress=False)


def test_region_cut_is_exact(tiny_store, tiny_checkpoint, tmp_path):
    out = tmp_path / "cone"
    predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(engine="eager",
                    region="cone:152,0,1.2"), cluster="none", progress=False)
    df = _frame(out)
    s = open_store(tiny_store)
    d = np.degrees(np.arccos(np.clip(
        np.cos(np.radians(s.dec)) * np.cos(np.radians(s.ra - 152.0)), -1, 1)))
    assert sorted(df.object_id) == sorted(s.object_id[d <= 1.2].tolist())
    with pytest.raises(InputError, match="overlaps no data"):
        predict_catalog(tiny_store, tiny_checkpoint, tmp_path / "none",
                        PredictOptions(region="cone:10,10,0.5"), cluster="none", progress=False)


def test_cli_predict_and_bad_checkpoint(tiny_store, tiny_checkpoint, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["predict", "--store", str(tiny_store), "--checkpoint", str(tiny_checkpoint),
                               "--out", str(tmp_path / "cli"), "--cluster", "none", "--mc-samples", "8"])
    assert res.exit_code == 0, res.output
    assert "240 galaxies" in res.output
    res = runner.invoke(main, ["predict", "--store", str(tiny_store), "--checkpoint", str(tmp_path),
                               "--out", str(tmp_path / "bad"), "--cluster", "none"])
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "galspec: error:" in res.output
    common = ["predict", "--store", str(tiny_store), "--checkpoint", str(tiny_checkpoint), "--cluster",
              "none"]
    res = runner.invoke(main, [*common, "--out", str(tmp_path / "tpu"), "--device", "cuda:x"])
    assert res.exit_code == 2
    assert res.output == "galspec: error: --device 'cuda:x': expected cpu, cuda or cuda:N\n"
    if not torch.cuda.is_available():  # where the run is, not the command line, says whether a GPU is there
        res = runner.invoke(main, [*common, "--out", str(tmp_path / "gpu"), "--device", "cuda"])
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert "--device cuda: torch sees no CUDA GPU here" in res.output


def test_killed_worker_partition_is_retried(tmp_path):
    from distributed import Client, LocalCluster

    store = make_tiny_store(tmp_path / "big.zarr", n=3000, size=32, width=20.0)
    ckpt = make_tiny_checkpoint(tmp_path / "ck", size=32)
    out = tmp_path / "killed"
    n_parts = len(open_store(store).partitions())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0) as cluster, Client(cluster) as client:
        result: dict = {}
        run = threading.Thread(target=lambda: result.setdefault("s", predict_catalog(store, ckpt, out,
                               PredictOptions(mc_samples=64, batch_size=16, engine="eager"),
                                              cluster=client, progress=False)))
        run.start()
        deadline = time.time() + 120
        while time.time() < deadline:
            done = list((out / "_state" / "done").glob("*.json")) if (out / "_state").exists() else []
            if len(done) >= 2:
                break
            time.sleep(0.05)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        done_at_kill = len(list((out / "_state" / "done").glob("*.json")))
        run.join(300)
    assert done_at_kill < n_parts, "the run finished before the worker was killed"
    df = _frame(out)
    assert df.object_id.is_unique and len(df) == 3000


def test_calibration_scales_the_mc_spread(tiny_catalog, tiny_store, tmp_path):
    from galspec_batch.catalog import read_provenance
    from galspec_batch.checkpoint import WEIGHTS_FILE, Calibration, save_calibration

    ckpt = make_tiny_checkpoint(tmp_path / "calibrated")
    scale = np.array([1.0, 2.0, 3.0, 0.5, 4.0, 1.5, 0.7])
    model_hash = hashlib.sha256((ckpt / WEIGHTS_FILE).read_bytes()).hexdigest()
    save_calibration(ckpt, Calibration(model_hash, tuple(f"latent_{i}" for i in range(1, 7)) + ("z",),
                                       tuple(scale), (5.0,) * 7, 16, 0, {"source": "test"}))
    out = tmp_path / "cal"
    predict_catalog(tiny_store, ckpt, out, PredictOptions(mc_samples=16, engine="eager"), cluster="none",
                    progress=False)
    a, b = _frame(tiny_catalog), _frame(out)
    np.testing.assert_allclose(b[LATENTS].to_numpy(), a[LATENTS].to_numpy())
    np.testing.assert_allclose(b[STDS].to_numpy(), a[STDS].to_numpy() * scale, rtol=1e-6)
    np.testing.assert_allclose(b[PARTS].to_numpy(), a[PARTS].to_numpy() * np.tile(scale, 2), rtol=1e-6)
    prov = read_provenance(out)["provenance"]
    assert prov["calibrated"] is True and prov["calibration"]["scale"] == scale.tolist()
    assert prov["calibration"]["nu"] == [5.0] * 7
    # t with 5 dof: 2-sigma half-width 2.6490 over the 1-sigma 1.1106
    assert prov["calibration"]["interval_factors"]["2"][0] == pytest.approx(2.3851, abs=1e-3)
    raw = tmp_path / "raw"
    predict_catalog(tiny_store, ckpt, raw, PredictOptions(mc_samples=16, engine="eager", calibrate=False),
                    cluster="none", progress=False)
    np.testing.assert_allclose(_frame(raw)[STDS].to_numpy(), a[STDS].to_numpy())
    assert read_provenance(raw)["provenance"]["calibrated"] is False


def test_a_point_head_without_redshift_writes_latents_and_their_spread(tiny_store, tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "point", head="point", redshift=False)
    out = tmp_path / "cat"
    predict_catalog(tiny_store, ckpt, out, PredictOptions(mc_samples=16, engine="eager"), cluster="none",
                    progress=False)
    cols = read_catalog(out).column_names
    assert [c for c in cols if c.startswith(("latent", "z_phot"))] == LATENTS[:6] + STDS[:6]


def test_an_array_task_leaves_other_tasks_partitions_alone(tiny_store, tiny_checkpoint, tmp_path):
    from galspec_batch.catalog.paths import run_state_file

    out = tmp_path / "array"
    parts = open_store(tiny_store).partitions()
    begin_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(engine="eager"))  # the coordinator
    predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(engine="eager"), cluster="none",
                    only=[parts[0].pixel], progress=False)
    # another task is mid-write of its partition: a temporary file, and a file not yet marked done
    other = work_file(out, parts[1].order, parts[1].pixel)
    other.parent.mkdir(parents=True, exist_ok=True)
    tmp = other.with_name(other.name + ".tmp-12345678")
    tmp.write_bytes(b"being written")
    other.write_bytes(b"renamed, marker not yet written")
    state = run_state_file(out).read_bytes()
    s = predict_catalog(tiny_store, tiny_checkpoint, out, PredictOptions(engine="eager"), cluster="none",
                        only=[parts[2].pixel], progress=False)
    assert s.partitions_done == 1
    assert tmp.exists() and other.exists()
    assert run_state_file(out).read_bytes() == state  # tasks do not rewrite the shared run state


def test_cluster_auto_runs_small_stores_in_process(tiny_store, tiny_checkpoint, tmp_path, monkeypatch):
    from galspec_batch import defaults as D
    from galspec_batch.predict.runner import resolve_cluster

    assert resolve_cluster("auto", tiny_store, "cpu") == "none"  # 240 cutouts
    s = predict_catalog(tiny_store, tiny_checkpoint, tmp_path / "a", PredictOptions(engine="eager",
                        mc_samples=4), progress=False)
    assert s.cluster == "none" and s.objects == 240
    monkeypatch.setattr(D, "AUTO_CLUSTER_MIN_OBJECTS", 200)
    monkeypatch.setattr(D, "AUTO_CLUSTER_MIN_CORES", 1)
    assert resolve_cluster("auto", tiny_store, "cpu") == "local"
    monkeypatch.setattr(D, "AUTO_CLUSTER_MIN_CORES", 10**6)  # too few cores
    assert resolve_cluster("auto", tiny_store, "cpu") == "none"
    monkeypatch.setattr(D, "AUTO_CLUSTER_MIN_CORES", 1)
    monkeypatch.setattr(D, "AUTO_CLUSTER_MIN_OBJECTS", 241)
    assert resolve_cluster("auto", tiny_store, "cpu") == "none"
    assert resolve_cluster("local", tiny_store, "cpu") == "local"


def test_workers_get_back_mallocs_own_thresholds():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its workers; the plugin undoes its cost."""
    import subprocess
    import sys

    code = "from galspec_batch.predict.worker import undo_malloc_trim as u; print(u())"
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    set_ = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env.pop("MALLOC_TRIM_THRESHOLD_")
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert set_.stdout.strip() == "True" and unset.stdout.strip() == "False"
