"""Fault injection: every failure leaves a state that one command repairs, and nothing wrong is
ever served. Each run is compared bit for bit (object ids and every value) with an uninterrupted
reference run of the same settings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_catalog, make_tiny_checkpoint, make_tiny_store
from safetensors.torch import load_file, save_file

from galspec_batch.catalog import catalog_status, read_catalog, verify_catalog
from galspec_batch.catalog import paths as cpaths
from galspec_batch.cli import main
from galspec_batch.columns import QualityFlag
from galspec_batch.errors import BusyError, FormatError, IncompleteOutputError, InputError, UsageError
from galspec_batch.options import PredictOptions
from galspec_batch.predict import predict_catalog
from galspec_batch.select import select_targets
from galspec_batch.store import create_store, open_store

OPTIONS = ["--mc-samples", "8", "--engine", "eager", "--batch-size", "32", "--cluster", "none", "-q"]


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """A store and an xresnet18 checkpoint slow enough (a few seconds) to be interrupted, and the
    uninterrupted reference catalog of the settings in OPTIONS."""
    root = tmp_path_factory.mktemp("faults")
    store = make_tiny_store(root / "store.zarr", n=1500, seed=3)
    ckpt = make_tiny_checkpoint(root / "ckpt", model="xresnet18")
    ref = make_tiny_catalog(store, ckpt, root / "ref", mc_samples=8, batch_size=32)
    return store, ckpt, ref


def frame(catalog: Path) -> pd.DataFrame:
    """Every row of a catalog, sorted by object_id, read without any of galspec's own checks."""
    files = sorted((cpaths.primary_dir(catalog) / "dataset").glob("Norder=*/Dir=*/*.parquet"))
    df = pd.concat([pq.read_table(f).to_pandas() for f in files]).sort_values("object_id")
    return df.reset_index(drop=True)


def same(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(frame(a), frame(b), check_exact=True)


def galspec(*args, **kwargs) -> subprocess.Popen:
    """The command in a process of its own, with SIGINT handled as a terminal's command has it: a
    suite run as a background job of a non-interactive shell has SIGINT ignored, which a child
    inherits (and galspec, rightly, keeps)."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "galspec_batch.cli", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, **kwargs)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def predict_args(inputs, out) -> list:
    store, ckpt, _ = inputs
    return ["predict", "--store", store, "--checkpoint", ckpt, "-o", out, *OPTIONS]


def wait_for(path: Path, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.05)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galspec: error: "), stderr
    return lines[0]


# -- interrupted runs resume to the reference ----------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_point_then_resume(slow, tmp_path, seed):
    out = tmp_path / "cat"
    proc = galspec(*predict_args(slow, out))
    wait_for(cpaths.run_state_file(out))
    time.sleep(np.random.default_rng(seed).uniform(0, 2.5))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    rerun = galspec(*predict_args(slow, out))
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    same(out, slow[2])
    assert verify_catalog(out) == [] and catalog_status(out).complete


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_stop_cleanly_and_resume(slow, tmp_path, sig, code):
    out = tmp_path / "cat"
    parent = f"this process: SIGINT handler {signal.getsignal(signal.SIGINT)}, " \
             f"blocked {sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}"
    t0 = time.monotonic()
    proc = galspec(*predict_args(slow, out))
    wait_for(cpaths.run_state_file(out))
    began = time.monotonic() - t0
    while not list(cpaths.state_dir(out).rglob("p*.parquet")) and proc.poll() is None:
        time.sleep(0.02)  # the first partition is written: the run is under way, with more to do
    signalled = time.monotonic() - t0
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    ended = time.monotonic() - t0
    timings = f"began at {began:.1f} s, signalled at {signalled:.1f} s, ended at {ended:.1f} s"
    assert proc.returncode == code, f"{timings}; {parent}; stderr: {err!r}"
    assert one_line(err) == "galspec: error: interrupted; rerun the same command to resume"
    assert not list(out.glob("_state/parts/**/*.tmp-*")) or not catalog_status(out).complete
    rerun = galspec(*predict_args(slow, out))
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    same(out, slow[2])


def test_a_run_started_with_sigint_blocked_still_stops_on_it(slow, tmp_path):
    # a blocked signal mask is inherited across exec; from a parent that leaked one, predict was
    # deaf to Ctrl-C (it ran on to exit 0), so galspec unblocks SIGINT and SIGTERM when it starts
    out = tmp_path / "cat"
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc = galspec(*predict_args(slow, out))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    wait_for(cpaths.run_state_file(out))
    while not list(cpaths.state_dir(out).rglob("p*.parquet")) and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert one_line(err) == "galspec: error: interrupted; rerun the same command to resume"


def test_an_interrupt_python_lost_still_stops_the_run_at_its_next_batch(slow, tmp_path, monkeypatch):
    # Python drops an exception that a signal handler raises inside a finalizer, and the run went
    # on to exit 0; the handler also remembers the signal, and the next batch stops the run
    from galspec_batch.errors import stop_on_signal
    from galspec_batch.predict import task

    real, batches = task.run_feed, []

    def feed_losing_a_sigint(*args, **kwargs):
        for item in real(*args, **kwargs):
            batches.append(1)
            if len(batches) == 3:
                try:
                    stop_on_signal(signal.SIGINT)
                except KeyboardInterrupt:
                    pass  # lost, as in a finalizer
            yield item

    monkeypatch.setattr(task, "run_feed", feed_losing_a_sigint)
    out = tmp_path / "cat"
    res = CliRunner().invoke(main, predict_args(slow, out))
    assert res.exit_code == 130 and len(batches) == 3, res.output
    assert res.stderr.strip() == "galspec: error: interrupted; rerun the same command to resume"
    assert not catalog_status(out).complete
    monkeypatch.setattr(task, "run_feed", real)
    res = CliRunner().invoke(main, predict_args(slow, out))
    assert res.exit_code == 0, res.output
    same(out, slow[2])


def test_a_second_run_into_the_same_catalog_is_refused_at_once(slow, tmp_path):
    out = tmp_path / "cat"
    first = galspec(*predict_args(slow, out))
    wait_for(cpaths.run_state_file(out))
    t0 = time.monotonic()
    second = galspec(*predict_args(slow, out))
    _, err = second.communicate(timeout=60)
    assert second.returncode == 1 and time.monotonic() - t0 < 15
    line = one_line(err)
    assert f"catalog {out} is being written by galspec predict (pid {first.pid} on " in line
    assert first.wait(timeout=300) == 0
    same(out, slow[2])


def test_changed_settings_are_refused_on_resume(slow, tmp_path):
    store, ckpt, ref = slow
    out = tmp_path / "cat"
    predict_catalog(store, ckpt, out, PredictOptions(mc_samples=8, engine="eager", batch_size=32),
                    cluster="none",
                    progress=False, finalize=False)
    for partition in list(out.glob("_state/parts/**/*.parquet"))[:3]:
        partition.unlink()  # as if killed before these were written
    with pytest.raises(InputError) as info:
        changed = PredictOptions(mc_samples=4, seed=7, precision="bf16", engine="eager", batch_size=32)
        predict_catalog(store, ckpt, out, changed, cluster="none", progress=False)
    message = str(info.value)
    assert ("mc_samples=8, precision=fp32, seed=0; this run has mc_samples=4, precision=bf16, seed=7"
            in message)
    # the batch size picks the CPU kernels' summation order: a resume must keep it too
    with pytest.raises(InputError, match="batch_size=32; this run has batch_size=7"):
        predict_catalog(store, ckpt, out, PredictOptions(mc_samples=8, engine="eager", batch_size=7),
                        cluster="none", progress=False)
    predict_catalog(store, ckpt, out, PredictOptions(mc_samples=8, engine="eager", batch_size=32),
                    cluster="none",
                    progress=False)
    same(out, ref)


def test_engine_auto_is_resolved_once_and_recorded(slow, tmp_path):
    store, ckpt, _ = slow
    out = tmp_path / "cat"
    predict_catalog(store, ckpt, out, PredictOptions(mc_samples=8, engine="auto"), cluster="none",
                    progress=False, finalize=False)
    run = json.loads(cpaths.run_state_file(out).read_text())
    engine = run["settings"]["engine"]
    assert engine in ("eager", "onnxruntime")
    markers = [json.loads(f.read_text()) for f in (out / "_state" / "done").glob("*.json")]
    assert {m["written_by"]["engine"] for m in markers} == {engine}
    other = "eager" if engine == "onnxruntime" else "onnxruntime"
    with pytest.raises(InputError, match=f"engine={engine}; this run has .*engine={other}"):
        predict_catalog(store, ckpt, out, PredictOptions(mc_samples=8, engine=other), cluster="none",
                        progress=False)


# -- damaged catalogs: found by a command, repaired by the same command ---------------------------


def _finished(slow, tmp_path) -> Path:
    out = tmp_path / "cat"
    res = CliRunner().invoke(main, predict_args(slow, out))
    assert res.exit_code == 0, res.output
    return out


def _partition_files(catalog: Path) -> list[Path]:
    """The run's own file of each store partition (what a done marker vouches for)."""
    return sorted(catalog.glob("_state/parts/o*/d*/p*.parquet"))


def _published_files(catalog: Path) -> list[Path]:
    return sorted(catalog.glob("latents/dataset/Norder=*/Dir=*/Npix=*.parquet"))


def test_a_flipped_byte_is_found_refused_and_repaired(slow, tmp_path):
    out = _finished(slow, tmp_path)
    victim = _partition_files(out)[2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the column data: the Parquet file still opens
    victim.write_bytes(bytes(data))
    pixel = int(victim.stem[1:])
    problems = verify_catalog(out)
    assert len(problems) == 1 and f"Npix={pixel}" in problems[0] and "checksum" in problems[0]
    res = CliRunner().invoke(main, ["verify", str(out)])
    assert res.exit_code == 1 and f"Npix={pixel}" in res.output
    assert not catalog_status(out).complete
    res = CliRunner().invoke(main, ["status", str(out)])
    assert "damaged" in res.output and "complete" not in res.output.splitlines()[0]
    same(out, slow[2])  # what readers see is still what was published, and checked
    res = CliRunner().invoke(main, predict_args(slow, out))  # the same command repairs it
    assert res.exit_code == 0 and "1 of them repaired" in res.output, res.output
    same(out, slow[2])
    assert verify_catalog(out) == [] and catalog_status(out).complete
    assert (out / "collection.properties").exists()
    # a flipped byte in a published file: refused by every reader of galspec, published again
    victim = _published_files(out)[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    assert any(str(victim) in p and "sha256" in p for p in verify_catalog(out))
    with pytest.raises(IncompleteOutputError, match="differs from what finalize published"):
        read_catalog(out)
    with pytest.raises(IncompleteOutputError, match="differs from what finalize published"):
        select_targets(out, where="latent_1 > 0")
    res = CliRunner().invoke(main, predict_args(slow, out))
    assert res.exit_code == 0 and "published again" in res.output, res.output
    same(out, slow[2])
    assert verify_catalog(out) == []


@pytest.mark.parametrize("damage", ["delete", "truncate", "unmark"])
def test_deleted_truncated_or_unmarked_partition_of_a_finished_catalog_is_repaired(slow, tmp_path, damage):
    out = _finished(slow, tmp_path)
    victim = _partition_files(out)[1]
    pixel = int(victim.stem[1:])
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        cpaths.done_marker(out, 4, pixel).unlink()
    status = CliRunner().invoke(main, ["status", str(out), "--json"])
    assert status.exit_code == 0 and not json.loads(status.output)["complete"]
    assert f"Npix={pixel}" in "".join(verify_catalog(out))
    res = CliRunner().invoke(main, predict_args(slow, out))
    assert res.exit_code == 0, res.output
    same(out, slow[2])
    assert verify_catalog(out) == []
    again = CliRunner().invoke(main, predict_args(slow, out))
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_a_flipped_byte_in_a_store_chunk_is_an_error_naming_the_objects(tmp_path, tiny_checkpoint):
    store = make_tiny_store(tmp_path / "s.zarr", n=240)
    shard = sorted((store / "images" / "c").rglob("*"))[-1]
    data = bytearray(shard.read_bytes())
    for k in range(64):
        data[200 + 16 * k] ^= 0xFF
    shard.write_bytes(bytes(data))
    args = predict_args((store, tiny_checkpoint, None), tmp_path / "cat")
    res = subprocess.run([sys.executable, "-m", "galspec_batch.cli", *args], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert "cannot be read, damaged on disk" in line and "object_id" in line and "checksum" in line


# -- non-finite numbers never enter a catalog as numbers ----------------------------------------------


def test_nan_weights_are_refused_with_one_line(tmp_path, tiny_store):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    weights = load_file(ckpt / "model.safetensors")
    weights["cnn.head.1.weight"][0, 0] = float("nan")
    save_file(weights, ckpt / "model.safetensors")
    res = CliRunner().invoke(main, ["predict", "--store", str(tiny_store), "--checkpoint", str(ckpt),
                                    "-o", str(tmp_path / "cat"), "--cluster", "none"])
    assert res.exit_code == 1
    assert "cnn.head.1.weight holds NaN or infinite values" in res.output and res.output.count("\n") == 1


@pytest.mark.parametrize("bad", [np.inf, 1e30])
def test_absurd_labels_are_refused_naming_the_object(tmp_path, tiny_store, bad):
    ids = open_store(tiny_store).object_id[:50]
    latents = np.random.default_rng(0).normal(size=(50, 6))
    latents[7, 2] = bad
    pq.write_table(pa.table({"object_id": ids, **{f"latent_{i + 1}": latents[:, i] for i in range(6)}}),
                   tmp_path / "labels.parquet")
    res = CliRunner().invoke(main, ["train", "--model", "simple-cnn", "--store", str(tiny_store), "--labels",
                                    str(tmp_path / "labels.parquet"), "-o", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 1 and f"object_id [{ids[7]}]" in res.output, res.output


@pytest.mark.parametrize("column, values, message", [
    ("object_id", [1.0, 2.0], "object_id is double; object ids are integers"),
    ("object_id", ["a", "b"], "object_id is string"),
    ("latent_1", ["0.1", "0.2"], "column latent_1 is string; latents are numbers"),
])
def test_labels_of_the_wrong_type_are_refused(tmp_path, column, values, message):
    from galspec_batch.labels import read_labels

    cols = {"object_id": [1, 2], "latent_1": [0.1, 0.2], column: values}
    pq.write_table(pa.table(cols), tmp_path / "l.parquet")
    with pytest.raises(InputError, match=message):
        read_labels(tmp_path / "l.parquet")


def test_a_non_finite_prediction_is_null_and_flagged(tmp_path, tiny_store):
    from galspec_batch.checkpoint import save_checkpoint
    from galspec_batch.models import GalspecNet, create_model

    torch.manual_seed(0)
    cnn = create_model("simple-cnn", dropout=0.2)
    with torch.no_grad():
        cnn.head[1].bias[2] = 1e34  # finite weights; times latent_std 1e6, beyond float32
    net = GalspecNet(cnn, torch.ones(5), torch.zeros(5), torch.ones(5), torch.zeros(6),
                     torch.tensor([1.0, 1, 1e6, 1, 1, 1])).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", net, {"bands": list("grizy"), "image_size": [16, 16],
                                                     "targets": [f"latent_{i}" for i in range(1, 7)]})
    out = make_tiny_catalog(tiny_store, ckpt, tmp_path / "cat", mc_samples=4)
    df = read_catalog(out).to_pandas()
    bad = (df.quality_flags & int(QualityFlag.BAD_PREDICTION)) != 0
    assert bad.all() and df.latent_3.isna().all() and df.latent_1_std.isna().all()
    assert df.latent_1_std_aleatoric.isna().all() and df.latent_1_std_epistemic.isna().all()
    with pytest.raises(UsageError, match="240 of 240 rows .* no value for latent_3"):
        select_targets(out, where="latent_3 > 1000")  # a NULL would silently fail the cut
    assert len(select_targets(out, where="latent_3 > 1000", allow_missing=True)) == 0


def test_image_flags_for_inf_constant_nan_and_extreme_pixels(tmp_path):
    images = np.random.default_rng(0).normal(size=(6, 5, 8, 8)).astype(np.float32)
    images[0, 1, 0, 0] = np.inf
    images[1, 2] = 0.0  # an all-zero band
    images[2, 3] = np.nan  # an all-NaN band: not observed
    images[3, 0, 2, 2] = 3e38  # beyond float16, and beyond AB magnitude 0
    images[4, 0, 2, 2] = -1e30
    with create_store(tmp_path / "s.zarr", image_shape=(8, 8), partition_order=2) as w:
        w.append(np.arange(6), np.full(6, 10.0), np.linspace(0, 1, 6), images)
    s = open_store(tmp_path / "s.zarr")
    flags = dict(zip(s.object_id.tolist(), s.flags.tolist(), strict=True))
    f = QualityFlag
    assert flags == {0: f.INF_PIXELS, 1: f.CONSTANT_BAND, 2: f.NAN_PIXELS | f.MISSING_BAND,
                     3: f.EXTREME_PIXELS,
                     4: f.EXTREME_PIXELS, 5: 0}
    row = int(np.flatnonzero(s.object_id == 2)[0])
    assert not s.mask[row, 3]
    assert np.isfinite(s.read(np.array([int(np.flatnonzero(s.object_id == 3)[0])]), dtype=None).images).all()


# -- the flux scale is checked ----------------------------------------------------------------------


def test_a_store_at_another_zero_point_is_refused_or_rescaled(tmp_path):
    from galspec_batch.checkpoint import read_config, save_checkpoint
    from galspec_batch.models import GalspecNet, create_model

    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 5, 16, 16)).astype(np.float32) * 10
    for name, zp, scale in (("ps1", 22.5, 1.0), ("hsc", 27.0, 10 ** (0.4 * 4.5))):
        with create_store(tmp_path / f"{name}.zarr", image_shape=(16, 16), partition_order=3,
                          flux_unit="nanomaggy" if name == "ps1" else "count",
                          zero_points=dict.fromkeys("grizy", zp),
                          survey="test", dtype="float32") as w:
            w.append(np.arange(40), np.full(40, 150.0), np.linspace(0, 1, 40), images * scale)
    torch.manual_seed(0)
    net = GalspecNet(create_model("simple-cnn"), torch.ones(5), torch.zeros(5), torch.ones(5), torch.zeros(6),
                     torch.ones(6)).eval()
    ckpt = save_checkpoint(tmp_path / "ck", net, {
        "bands": list("grizy"), "image_size": [16, 16], "pixel_scale": 0.25,
        "targets": [f"latent_{i}" for i in range(1, 7)], "survey": "test", "flux_unit": "nanomaggy",
        "zero_points": [22.5] * 5})
    assert read_config(ckpt).zero_points == (22.5,) * 5
    ref = make_tiny_catalog(tmp_path / "ps1.zarr", ckpt, tmp_path / "ref", mc_samples=4)
    with pytest.raises(InputError,
                       match="trained on nanomaggy at AB zero point 22.5 but store .* holds count at 27.0"):
        make_tiny_catalog(tmp_path / "hsc.zarr", ckpt, tmp_path / "c1", mc_samples=4)
    out = make_tiny_catalog(tmp_path / "hsc.zarr", ckpt, tmp_path / "c2", mc_samples=4, rescale_flux=True)
    a, b = frame(ref), frame(out)
    cols = [c for c in a.columns if c.startswith("latent_")]
    np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), rtol=1e-4, atol=1e-5)


# -- bad input: one line, never a traceback ---------------------------------------------------------


def test_absurd_or_incomplete_checkpoint_configs_are_refused_before_anything_is_built(tmp_path, tiny_store):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    for bad, message in (({**cfg, "model": {**cfg["model"], "n_out": 10**9}},
                          "model.n_out must be an integer in"),
                         ({k: v for k, v in cfg.items() if k != "model"}, "lacks model"),
                         ({**cfg, "training": {"x": "y" * (2 << 20)}}, "bytes; a galspec JSON document")):
        (ckpt / "config.json").write_text(json.dumps(bad))
        res = CliRunner().invoke(main, ["predict", "--store", str(tiny_store), "--checkpoint", str(ckpt),
                                        "-o", str(tmp_path / "cat"), "--cluster", "none"])
        assert res.exit_code == 1 and message in res.output and res.output.count("\n") == 1, res.output
        assert not (tmp_path / "cat").exists()


def test_duplicate_ids_inside_one_partition_are_named(tmp_path):
    from galspec_batch.catalog import Outputs, catalog_schema, conform_table

    df = read_catalog_like(12)
    df.loc[5, "object_id"] = df.loc[2, "object_id"]
    with pytest.raises(InputError, match=f"object_id {df.loc[2, 'object_id']} appears more than once"):
        conform_table(df, catalog_schema(Outputs(6)), 0, 4)


def read_catalog_like(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"object_id": np.arange(n), "ra": rng.uniform(46, 47, n), "dec": rng.uniform(4, 5, n)})
    for i in range(1, 7):
        df[f"latent_{i}"] = rng.normal(size=n).astype(np.float32)
        df[f"latent_{i}_std"] = np.float32(0.1)
    df["mc_samples"], df["quality_flags"], df["model_id"] = 8, 0, "m"
    return df


def test_ingest_catalog_row_without_any_band_is_quarantined(tmp_path):
    from astropy.io import fits

    good = tmp_path / "g.fits"
    fits.PrimaryHDU(np.ones((16, 16), np.float32)).writeto(good)
    (tmp_path / "cat.csv").write_text(f"object_id,ra,dec,file_g,file_r\n1,150,2,{good},{good}\n2,150,2.1,,\n")
    res = CliRunner().invoke(main, ["ingest", "--catalog", str(tmp_path / "cat.csv"), "-o",
                                    str(tmp_path / "s.zarr"),
                                    "--pixel-scale", "0.25"])
    assert res.exit_code == 0, res.output
    assert "no image for any band" in res.output and "ingested 1 objects" in res.output


def test_a_non_integer_objid_header_is_quarantined(tmp_path):
    from astropy.io import fits

    header = fits.Header({"OBJID": "J100000+020000", "FILTER": "g", "CTYPE1": "RA---TAN",
                          "CTYPE2": "DEC--TAN",
                          "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 8.0, "CRPIX2": 8.0,
                          "CDELT1": -0.25 / 3600, "CDELT2": 0.25 / 3600})
    fits.PrimaryHDU(np.ones((16, 16), np.float32), header).writeto(tmp_path / "x_g.fits")
    with pytest.raises(InputError, match="header OBJID = 'J100000\\+020000' is not an int64 object id"):
        from galspec_batch.ingest.cutouts import ingest_cutouts

        ingest_cutouts([tmp_path / "x_g.fits"], tmp_path / "s.zarr", pixel_scale=0.25, strict=True,
                       catalog=None, progress=False)


# -- a full disk ------------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_a_rerun_finishes(slow, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (4 * 1024 * 1024 - 160 * 1024))  # leave about 160 KiB
        out = disk / "cat"
        res = subprocess.run([sys.executable, "-m", "galspec_batch.cli", *map(str, predict_args(slow, out))],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 1
        assert "No space left on device" in one_line(res.stderr)
        filler.unlink()
        res = subprocess.run([sys.executable, "-m", "galspec_batch.cli", *map(str, predict_args(slow, out))],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        same(out, slow[2])
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_busy_error_names_the_holder(tmp_path):
    from galspec_batch.catalog.lock import catalog_lock

    with catalog_lock(tmp_path / "cat", command="galspec finalize"):
        with pytest.raises(BusyError, match=rf"is being written by galspec finalize \(pid {os.getpid()} on "):
            with catalog_lock(tmp_path / "cat"):
                pass
        with pytest.raises(BusyError):
            with catalog_lock(tmp_path / "cat", shared=True):
                pass
    with catalog_lock(tmp_path / "cat", shared=True), catalog_lock(tmp_path / "cat", shared=True):
        with pytest.raises(BusyError, match="the array tasks of a SLURM submission"):
            with catalog_lock(tmp_path / "cat"):
                pass


def test_format_errors_are_one_line(tmp_path):
    with pytest.raises(FormatError, match="is not valid JSON"):
        from galspec_batch.checkpoint import CheckpointConfig

        (tmp_path / "c.json").write_text("{")
        CheckpointConfig.read(tmp_path / "c.json")


# -- found by the fault campaign after the first round ---------------------------------------------


def test_a_missing_store_chunk_file_is_an_error_not_zeros(tmp_path, tiny_checkpoint):
    store = make_tiny_store(tmp_path / "s.zarr", n=240)
    (store / "images" / "c" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(FormatError, match=r"the cutouts of rows 0\.\.\d+ are missing on disk"):
        open_store(store).read(slice(0, 10))
    store2 = make_tiny_store(tmp_path / "s2.zarr", n=240)
    (store2 / "flags" / "c" / "0").unlink()
    with pytest.raises(FormatError, match="the 'flags' values of rows 0..239 are missing on disk"):
        _ = open_store(store2).flags


def test_a_store_rewritten_or_a_config_edited_since_the_run_began_is_refused(tmp_path):
    store = make_tiny_store(tmp_path / "s.zarr", n=240)
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "cat"
    opts = PredictOptions(mc_samples=4, engine="eager")
    predict_catalog(store, ckpt, out, opts, cluster="none", progress=False, finalize=False)
    next(out.glob("_state/parts/**/*.parquet")).unlink()
    # the same ids and positions, other pixels: the content hash (and so the fingerprint) differs
    again = make_tiny_store(tmp_path / "s_again.zarr", n=240, seed=0)
    images = open_store(again).read(slice(0, 240)).images * 1.5
    shutil.rmtree(store)
    with create_store(store, image_shape=(16, 16), partition_order=4) as w:
        s = open_store(again)
        w.append(s.object_id, s.ra, s.dec, images, s.mask)
    with pytest.raises(InputError, match="changed since the catalog began"):
        predict_catalog(store, ckpt, out, opts, cluster="none", progress=False)
    cfg = json.loads((ckpt / "config.json").read_text())
    shutil.rmtree(store)
    shutil.copytree(again, store)
    # the original content is back (the fingerprint agrees again); now the config changes
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model": {**cfg["model"], "dropout": 0.5}}))
    with pytest.raises(InputError, match="model_config="):
        predict_catalog(store, ckpt, out, opts, cluster="none", progress=False)


@pytest.mark.parametrize("damage", ["stale", "truncated", "deleted", "info", "unfinished"])
def test_damaged_catalog_metadata_is_found_refused_and_rewritten(slow, tmp_path, damage):
    out = _finished(slow, tmp_path)
    meta = out / "latents" / "dataset" / "_metadata"
    if damage == "stale":  # the footers of all partitions but one
        files = _published_files(out)[1:]
        collector = []
        for f in files:
            md = pq.read_metadata(f)
            md.set_file_path(str(f.relative_to(out / "latents" / "dataset")))
            collector.append(md)
        pq.write_metadata(pq.read_schema(meta), meta, metadata_collector=collector)
    elif damage == "truncated":
        meta.write_bytes(meta.read_bytes()[:100])
    elif damage == "deleted":
        meta.unlink()
    elif damage == "info":
        info = out / "latents" / "partition_info.csv"
        info.write_text("\n".join(info.read_text().splitlines()[:-1]) + "\n")
    else:
        cpaths.complete_file(out).unlink()
    problems = verify_catalog(out)
    assert problems and not catalog_status(out).complete, problems
    res = CliRunner().invoke(main, ["verify", str(out)])
    assert res.exit_code == 1
    with pytest.raises(IncompleteOutputError):
        read_catalog(out)
    res = CliRunner().invoke(main, predict_args(slow, out))
    assert res.exit_code == 0 and "published again" in res.output, res.output
    assert verify_catalog(out) == [] and len(read_catalog(out)) == len(frame(slow[2]))
    same(out, slow[2])


def test_a_damaged_run_schema_is_written_again(slow, tmp_path):
    out = _finished(slow, tmp_path)
    schema = cpaths.schema_file(out)
    schema.write_bytes(schema.read_bytes()[:10])
    assert any("schema.parquet is damaged" in p for p in verify_catalog(out))
    res = CliRunner().invoke(main, predict_args(slow, out))
    assert res.exit_code == 0, res.output
    assert verify_catalog(out) == []


def test_a_changed_derived_extension_is_found_and_refused(tmp_path, tiny_store, tiny_checkpoint):
    from galspec_batch.decode import write_derived

    out = make_tiny_catalog(tiny_store, tiny_checkpoint, tmp_path / "cat", mc_samples=4)
    ids = read_catalog(out)["object_id"]
    from galspec_batch.columns import DERIVED_COLUMNS

    ones = pa.array(np.ones(len(ids), np.float32))
    table = pa.table({"object_id": ids, **dict.fromkeys(DERIVED_COLUMNS, ones)})
    write_derived(out, table, {"vae_weights_sha256": "x"})
    assert verify_catalog(out) == []
    victim = next(cpaths.derived_dir(out).glob("dataset/Norder=*/Dir=*/Npix=*.parquet"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    assert any(f"{victim} differs" in p for p in verify_catalog(out))
    with pytest.raises(IncompleteOutputError, match="differs from the record of its writing"):
        select_targets(out, where="ew_oii > 0")


@pytest.mark.parametrize("args, message", [
    (["--engine", "tensorrt"], "--engine tensorrt cannot run on cpu"),
    (["--cluster", "bogus"], "unknown --cluster 'bogus'"),
])
def test_a_command_line_that_cannot_run_writes_nothing(tmp_path, tiny_store, tiny_checkpoint, args, message):
    out = tmp_path / "cat"
    res = CliRunner().invoke(main, ["predict", "--store", str(tiny_store), "--checkpoint",
                                    str(tiny_checkpoint), "-o", str(out), *args])
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output
    assert not out.exists()


def test_finalize_of_an_empty_directory_keeps_it(tmp_path):
    empty = tmp_path / "e"
    empty.mkdir()
    res = CliRunner().invoke(main, ["finalize", str(empty)])
    assert res.exit_code == 1 and empty.is_dir()


def test_ctrl_c_while_the_local_cluster_starts_is_one_line(slow, tmp_path):
    store, ckpt, _ = slow
    proc = galspec("predict", "--store", store, "--checkpoint", ckpt, "-o", tmp_path / "cat",
                   "--cluster", "local", "--mc-samples", "8", "-q")
    wait_for(cpaths.run_state_file(tmp_path / "cat"))
    time.sleep(0.5)  # the workers are being spawned
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(3)  # Ctrl-C is held while the cluster starts: press it again once it is up
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130)
    if proc.returncode == 130:
        assert one_line(err) == "galspec: error: interrupted; rerun the same command to resume"
    else:
        assert err.strip() == ""
