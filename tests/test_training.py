"""Training: preprocessing, D4, RAdam + LookAhead + one-cycle, data checks, fit / resume / fine-tune,
and `galspec train` errors. Tiny data: simple-cnn on 200 objects of 32x32 px."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from galspec_batch.catalog.joins import match_rows
from galspec_batch.checkpoint import load_calibration, load_checkpoint, read_split
from galspec_batch.cli import main
from galspec_batch.errors import InputError
from galspec_batch.store import create_store, open_store
from galspec_batch.training import (
    TrainSettings,
    d4_transform,
    fit,
    fit_preprocess,
    make_one_cycle,
    make_optimizer,
    random_d4,
    read_training_labels,
    robust_sky_sigma,
    split_indices,
)
from galspec_batch.training.optim import flatten_state, unflatten_state

SIZE, N = 32, 200
FAST = TrainSettings(model="simple-cnn", epochs=5, batch_size=32, seed=0)


def write_labels(path, ids, values, z=None):
    cols = {"object_id": np.asarray(ids, np.int64)}
    cols.update({f"latent_{i + 1}": values[:, i].astype(np.float32) for i in range(values.shape[1])})
    if z is not None:
        cols["z"] = np.asarray(z, np.float32)
    pq.write_table(pa.table(cols), path)
    return path


def make_store(path, n=N, bands=("g", "r", "i", "z", "y"), seed=0):
    """Gaussian blobs with per-band amplitudes and a radius; latents are linear in their logs."""
    rng = np.random.default_rng(seed)
    nb = len(bands)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    logamp = rng.normal(0, 0.5, (n, nb))
    radius = rng.uniform(1.5, 5, n)
    prof = np.exp(-(xx**2 + yy**2)[None] / (2 * radius[:, None, None] ** 2))
    img = np.exp(logamp)[:, :, None, None] * prof[:, None] * 5 + rng.normal(0, 0.1, (n, nb, SIZE, SIZE))
    img = img.astype(np.float32)
    img[0, 1, :3, :3] = np.nan
    ids = rng.permutation(10_000)[:n].astype(np.int64) + 1000
    with create_store(path, bands=bands, image_shape=(SIZE, SIZE)) as w:
        w.append(ids, rng.uniform(150, 151, n), rng.uniform(2, 3, n), img)
    feats = np.column_stack([logamp[:, :5] if nb >= 5 else logamp, np.log(radius)])
    latents = feats @ rng.normal(0, 1, (feats.shape[1], 6)) + rng.normal(0, 0.1, (n, 6))
    # a redshift that the images tell: smaller and fainter is further
    z = 0.1 * np.exp(0.5 * (np.log(5) - np.log(radius)) - 0.3 * logamp[:, 0]) + rng.normal(0, 0.005, n)
    return path, ids, np.column_stack([latents, np.abs(z)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    store, ids, values = make_store(d / "s.zarr")
    labels = write_labels(d / "labels.parquet", ids, values[:, :6], values[:, 6])
    return {"dir": d, "store": store, "labels": labels, "ids": ids, "latents": values[:, :6],
            "z": values[:, 6]}


@pytest.fixture(scope="module")
def trained(data):
    torch.set_num_threads(1)
    result = fit(data["store"], data["labels"], data["dir"] / "run", FAST, progress=False)
    return result


# -- pieces ---------------------------------------------------------------------------------
def test_robust_sky_sigma_and_preprocess_stats():
    rng = np.random.default_rng(0)
    img = rng.normal(0, [0.1, 0.2, 0.3], (50, 16, 16, 3)).transpose(0, 3, 1, 2).astype(np.float32)
    img[:, :, 6:10, 6:10] += 50.0  # bright sources do not move a median-based noise estimate much
    img[0, 0, 0, 0] = np.nan
    sigma = robust_sky_sigma(img)
    assert sigma == pytest.approx([0.1, 0.2, 0.3], rel=0.15)
    pp = fit_preprocess(img)
    stretched = np.arcsinh(np.nan_to_num(img) / np.array(pp["softening"])[None, :, None, None])
    assert pp["mean"] == pytest.approx(stretched.mean(axis=(0, 2, 3)), rel=1e-4)
    assert pp["std"] == pytest.approx(stretched.std(axis=(0, 2, 3), ddof=1), rel=1e-3)


def test_d4_group():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    outs = {tuple(d4_transform(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8 and tuple(x.flatten().tolist()) in outs
    batch = torch.randn(64, 5, 8, 8)
    aug = random_d4(batch, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(64):
        matches = [k for k in range(8) if torch.equal(aug[i], d4_transform(batch[i], k))]
        assert len(matches) == 1  # every image under exactly one element, all bands alike
        seen.add(matches[0])
    assert seen == set(range(8))


def test_lookahead_and_one_cycle():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = make_optimizer(net, lr=0.03, weight_decay=0.01)
    sched = make_one_cycle(opt, max_lr=0.03, total_steps=100)
    start = [p.detach().clone() for p in net.parameters()]
    lrs, fast = [], None
    for step in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        net(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        if step == 4:
            fast = [p.detach().clone() for p in net.parameters()]
        if step == 5:  # the 6th step syncs: weights = slow + 0.5 (fast - slow), with slow = start
            inner = [p.detach().clone() for p in net.parameters()]
            assert all(torch.allclose(s, w) for s, w in zip(opt.slow, inner, strict=True))
            assert not any(torch.equal(s, st) for s, st in zip(opt.slow, start, strict=True))
    assert fast is not None
    assert lrs[0] == pytest.approx(0.03 / 25)
    assert max(lrs) == pytest.approx(0.03, rel=1e-3) and int(np.argmax(lrs)) in (24, 25)
    assert lrs[-1] < 1e-4
    # pickle-free state round trip
    tensors: dict[str, torch.Tensor] = {}
    flat = flatten_state({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tensors)
    back = unflatten_state(json.loads(json.dumps(flat)), tensors)
    assert back["scheduler"] == sched.state_dict()
    assert back["optimizer"]["optimizer"]["param_groups"] == opt.state_dict()["optimizer"]["param_groups"]
    assert back["optimizer"]["lookahead"]["step_count"] == 100


def test_labels_checks(tmp_path, data):
    bad = data["latents"].copy()
    bad[[3, 7]] = np.nan
    path = write_labels(tmp_path / "nan.parquet", data["ids"], bad)
    msg = f"NaN or infinite latents for 2 objects: object_id .*{data['ids'][3]}"
    with pytest.raises(InputError, match=msg):
        read_training_labels(path)
    dup = write_labels(tmp_path / "dup.parquet", np.r_[data["ids"][:5], data["ids"][:1]], data["latents"][:6])
    with pytest.raises(InputError, match="duplicate object ids"):
        read_training_labels(dup)
    pq.write_table(pa.table({"object_id": [1, 2], "z": [0.1, 0.2]}), tmp_path / "nolat.parquet")
    with pytest.raises(InputError, match="no latent columns"):
        read_training_labels(tmp_path / "nolat.parquet")
    lab = read_training_labels(data["labels"])
    assert lab.names == [f"latent_{i}" for i in range(1, 7)] and lab.values.dtype == np.float32
    store = open_store(data["store"])
    rows = match_rows(store.object_id, lab.object_id, f"the store {store.path}")
    assert np.array_equal(store.object_id[rows], lab.object_id)
    with pytest.raises(InputError, match=r"2 labelled objects are not in the store .*\[5, 6\]"):
        match_rows(store.object_id, np.r_[lab.object_id[:3], 5, 6], f"the store {store.path}")


def test_split_is_fixed_and_row_order_free():
    ids = np.arange(100, 200)
    tr, va = split_indices(ids, 0.2, seed=0)
    assert len(va) == 20 and len(tr) == 80 and not set(tr) & set(va)
    perm = np.random.default_rng(1).permutation(100)
    tr2, va2 = split_indices(ids[perm], 0.2, seed=0)
    assert set(ids[perm][va2]) == set(ids[va])
    assert set(ids[split_indices(ids, 0.2, seed=1)[1]]) != set(ids[va])


# -- fit, resume, fine-tune -------------------------------------------------------------------
def test_fit_learns_and_writes_outputs(trained, data):
    m = trained.metrics
    assert [r["epoch"] for r in m] == [1, 2, 3, 4, 5]
    assert trained.best_val_rmse < 0.8  # clearly better than predicting the mean (1.0)
    with open(data["dir"] / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    assert {"train_rmse", "train_loss", "val_rmse", "val_rmse_latent_6", "val_rmse_z", "val_nll",
            "val_z_nmad", "val_z_outliers", "lr", "img_per_s"} <= set(rows[0])
    assert float(rows[-1]["val_z_nmad"]) < 0.5 * float(rows[0]["val_z_nmad"])  # the redshift is learnt
    ck = load_checkpoint(trained.best)
    cfg = ck.config
    assert cfg.redshift and cfg.model.head == "gaussian" and cfg.training["loss"] == "beta-nll"
    assert ck.targets == [f"latent_{i}" for i in range(1, 7)] + ["z"]
    # training ends calibrated: fitted on half the validation split, assessed on the other half
    cal = load_calibration(trained.best)
    assert cal.targets == tuple(ck.targets) and cal.fitted_on["n_fit"] == 40 and cal.mc_samples == 32
    assert trained.calibration.after.n == 20 and cal.anomaly is None  # too few for a null model
    assert [a.tolist() for a in read_split(trained.best)] == [a.tolist() for a in read_split(trained.last)]
    assert cfg.training["best_val_rmse"] == pytest.approx(trained.best_val_rmse)
    assert cfg.training["max_lr"] == 0.03 and cfg.training["weight_decay"] == 0.01
    assert cfg.training["device"] == "cpu"
    assert cfg.data["n_train"] == 160 and cfg.data["n_val"] == 40
    assert cfg.data["store_fingerprint"] == open_store(data["store"]).fingerprint()
    # the checkpoint reproduces the validation RMSE from raw store images
    store, lab = open_store(data["store"]), read_training_labels(data["labels"])
    tr, va = split_indices(lab.object_id, 0.2, 0)
    mean = lab.values[tr].mean(0)
    std = lab.values[tr].std(0)
    assert ck.net.target_mean.numpy()[:6] == pytest.approx(mean, rel=1e-5)
    assert sorted(read_split(trained.best)[1].tolist()) == sorted(lab.object_id[va].tolist())
    rows = match_rows(store.object_id, lab.object_id[va], "the store")
    order = np.argsort(rows)
    x = torch.from_numpy(store.read(rows[order]).images)
    with torch.no_grad():
        z = ck.net.predict(x)[0].numpy()[:, :6]
    target = (lab.values[va][order] - mean) / std
    assert np.sqrt(np.mean((z - target) ** 2)) == pytest.approx(trained.best_val_rmse, rel=1e-4)


def test_resume_after_kill_equals_uninterrupted(trained, data):
    class Killed(Exception):
        pass

    def kill_after_first(record):
        if record["epoch"] == 1:
            raise Killed

    out = data["dir"] / "killed"
    with pytest.raises(Killed):
        fit(data["store"], data["labels"], out, FAST, progress=False, on_epoch_end=kill_after_first)
    assert json.loads((out / "last" / "trainer_state.json").read_text())["metrics"][0]["epoch"] == 1
    resumed = fit(data["store"], data["labels"], out, FAST, progress=False)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3, 4, 5]
    for a, b in zip(resumed.metrics, trained.metrics, strict=True):
        assert a["val_rmse"] == pytest.approx(b["val_rmse"], rel=1e-5, abs=1e-6)
        assert a["train_rmse"] == pytest.approx(b["train_rmse"], rel=1e-5, abs=1e-6)
    w1 = load_checkpoint(out / "last").net.state_dict()
    w2 = load_checkpoint(trained.last).net.state_dict()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    # a finished run is not trained again; other settings are refused
    again = fit(data["store"], data["labels"], out, FAST, progress=False)
    assert again.metrics == resumed.metrics
    with pytest.raises(InputError, match="epochs=5->6"):
        longer = TrainSettings(**{**FAST.__dict__, "epochs": 6})
        fit(data["store"], data["labels"], out, longer, progress=False)


def test_fine_tune_with_init_through_cli(trained, data, tmp_path):
    new = data["latents"][:150] + 0.5
    labels = write_labels(tmp_path / "new.parquet", data["ids"][:150], new, data["z"][:150])
    out = tmp_path / "ft"
    res = CliRunner().invoke(main, ["train", "--store", str(data["store"]), "--labels", str(labels),
                                    "--epochs", "2", "--batch-size", "32", "--out", str(out),
                                    "--init", str(trained.best), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "best val_rmse" in res.output
    base, tuned = load_checkpoint(trained.best), load_checkpoint(out / "best")
    assert tuned.bands == base.bands and tuned.config.model == base.config.model
    assert tuned.config.preprocess == base.config.preprocess
    assert tuned.config.init["model_hash"] == base.model_hash
    assert tuned.config.training["max_lr"] == pytest.approx(0.003)
    # validation objects the base network trained on move to the training split, which counts them all
    tr, va = split_indices(data["ids"][:150], 0.2, 0)
    base_train, _ = read_split(trained.best)
    seen = np.isin(data["ids"][:150][va], base_train)
    assert seen.any() and not seen.all()
    tr = np.sort(np.concatenate([tr, va[seen]]))
    assert tuned.net.target_mean.numpy()[:6] == pytest.approx(new[tr].mean(0), rel=1e-5)  # the new labels
    t_split, v_split = read_split(out / "best")
    assert len(v_split) == (~seen).sum() and not np.isin(v_split, base_train).any()
    assert np.isin(base_train, t_split).all() and np.isin(data["ids"][:150][tr], t_split).all()
    after = tuned.net.cnn.state_dict()
    changed = [k for k, v in base.net.cnn.state_dict().items() if not torch.equal(v, after[k])]
    assert any(k.startswith("head") for k in changed) and any(k.startswith("body") for k in changed)
    assert tuned.config.training["best_val_rmse"] < 0.8
    # a checkpoint that predicts the redshift needs labels with z; its head fixes the loss
    no_z = write_labels(tmp_path / "noz.parquet", data["ids"][:150], new)
    init = ["--store", data["store"], "--init", trained.best]
    res = _invoke(*init, "--labels", no_z, "--out", tmp_path / "ft2")
    _one_line_error(res, "the labels have no z column to train the redshift on")
    res = _invoke(*init, "--labels", labels, "--out", tmp_path / "ft3", "--loss", "rmse")
    _one_line_error(res, "has a gaussian head, trained with --loss beta-nll")


def test_the_papers_rmse_recipe_without_redshift(data, tmp_path):
    torch.set_num_threads(1)
    settings = TrainSettings(model="simple-cnn", epochs=5, batch_size=32, seed=0, loss="rmse", redshift=False)
    result = fit(data["store"], data["labels"], tmp_path / "paper", settings, progress=False)
    ck = load_checkpoint(result.best)
    assert ck.net.head_kind == "point" and ck.targets == [f"latent_{i}" for i in range(1, 7)]
    assert "val_nll" not in result.metrics[-1] and "val_z_nmad" not in result.metrics[-1]
    assert result.best_val_rmse < 0.8 and result.calibration is not None
    # the paper's exact recipe, without dropout, has no spread: it trains and stays uncalibrated
    settings = TrainSettings(model="simple-cnn", epochs=1, batch_size=32, loss="rmse", redshift=False,
                             dropout=0.0)
    result = fit(data["store"], data["labels"], tmp_path / "paper0", settings, progress=False)
    assert result.calibration is None and not (result.best / "calibration.json").exists()
    assert "point head without dropout" in result.uncalibrated


def _invoke(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def _one_line_error(res, pattern, code=1):
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines() if hasattr(res, "stderr") else res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galspec: error:"), lines
    assert pattern in lines[0], lines[0]


def test_cli_bad_inputs(trained, data, tmp_path):
    common = ["--model", "simple-cnn", "--epochs", "1", "--store", data["store"]]
    ids = np.r_[data["ids"][:20], [7, 8]]
    unknown = write_labels(tmp_path / "unknown.parquet", ids, data["latents"][:22])
    _one_line_error(_invoke(*common, "--labels", unknown, "--out", tmp_path / "a"), "not in the store")
    bad = data["latents"].copy()
    bad[5, 2] = np.nan
    nan = write_labels(tmp_path / "nan.parquet", data["ids"], bad)
    res = _invoke(*common, "--labels", nan, "--out", tmp_path / "b")
    _one_line_error(res, f"object_id [{data['ids'][5]}]")
    store3, ids3, lat3 = make_store(tmp_path / "gri.zarr", n=40, bands=("g", "r", "i"))
    lab3 = write_labels(tmp_path / "l3.parquet", ids3, lat3)
    _one_line_error(
        _invoke("--store", store3, "--labels", lab3, "--out", tmp_path / "c", "--init", trained.best),
        "trained on 5 bands grizy but the store",
    )
    res = _invoke(*common, "--labels", data["labels"], "--out", tmp_path / "d", "--model", "xresnet")
    _one_line_error(res, "unknown model 'xresnet'", code=2)
    res = _invoke(*common, "--labels", data["labels"], "--out", tmp_path / "e", "--device", "tpu")
    _one_line_error(res, "--device 'tpu': expected cpu, cuda or cuda:N", code=2)
    if not torch.cuda.is_available():
        res = _invoke(*common, "--labels", data["labels"], "--out", tmp_path / "f", "--device", "cuda")
        _one_line_error(res, "--device cuda: torch sees no CUDA GPU here", code=2)
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


def test_a_diverging_run_stops_at_the_first_non_finite_loss(data, tmp_path):
    common = ["--model", "simple-cnn", "--epochs", "2", "--batch-size", "32", "--store", data["store"],
              "--labels", data["labels"]]
    res = _invoke(*common, "--out", tmp_path / "nan", "--lr", "1e30")
    _one_line_error(res, "training diverged in epoch 1: at batch ")
    assert "the loss is nan; nothing of that epoch was kept: lower --lr (now 1e+30)" in res.output
    assert not (tmp_path / "nan" / "best").exists()  # no checkpoint of non-finite weights
    # one step of all 160 training objects: its loss (before the step) is finite, the predictions after not
    res = _invoke(*common, "--out", tmp_path / "inf", "--lr", "1e30", "--batch-size", "160")
    _one_line_error(res, "training diverged in epoch 1: the network predicts values that are not finite for ")
    res = _invoke(*common, "--out", tmp_path / "nan", "--lr", "0.01", "--overwrite")
    assert res.exit_code == 0, res.output


def test_labelled_objects_the_store_quarantined_are_left_out(tmp_path):
    from galspec_batch.ingest.quarantine import Quarantined, write_quarantine

    store, ids, values = make_store(tmp_path / "s.zarr", n=60)
    extra = np.array([10_007, 10_008])
    labels = write_labels(tmp_path / "l.parquet", np.r_[ids, extra, [10_009]],
                          np.r_[values[:, :6], np.zeros((3, 6))])
    common = ["--model", "simple-cnn", "--epochs", "1", "--store", store, "--labels", labels]
    write_quarantine(store, [Quarantined("a.fits", 10_007, "no cutout"), Quarantined("b.fits", 10_008, "x"),
                             Quarantined("c.fits", None, "a file with no object")])
    # 10,009 is neither in the store nor in its quarantine list: refused by name
    _one_line_error(_invoke(*common, "--out", tmp_path / "a"), "object_id [10009]")
    labels = write_labels(tmp_path / "l2.parquet", np.r_[ids, extra], np.r_[values[:, :6], np.zeros((2, 6))])
    res = _invoke(*common[:-1], labels, "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    assert "left out 2 labelled objects the store quarantined" in res.output
    assert "object_id [10007, 10008]" in res.output
    n = json.loads((tmp_path / "b" / "best" / "config.json").read_text())["data"]
    assert (n["n_train"] + n["n_val"], n["n_quarantined_left_out"]) == (60, 2)
    (tmp_path / "s.zarr.quarantine.csv").write_text("path,object_id,reason\na.fits,ten,bad\n")
    res = _invoke(*common[:-1], labels, "--out", tmp_path / "c")
    _one_line_error(res, "s.zarr.quarantine.csv cannot be read")
