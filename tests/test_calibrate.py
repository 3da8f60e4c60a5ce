"""The calibrated predictive distribution (scale and Student-t shape), its assessment, the
calibration file and `galspec calibrate`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import make_tiny_catalog, make_tiny_checkpoint
from scipy import stats

from galspec_batch.calibrate import calibrate_catalog, fit_calibration, split_objects
from galspec_batch.catalog import read_catalog
from galspec_batch.checkpoint import CALIBRATION_FILE, load_calibration, read_split, write_split
from galspec_batch.cli import main
from galspec_batch.errors import FormatError, InputError
from galspec_batch.uncertainty import NU_MAX, assess, coverage, fit_t, gaussian_coverage, interval_factor, pit

TARGETS = [f"latent_{i}" for i in range(1, 7)] + ["z"]


def test_coverage_counts_hand_example():
    r = np.array([[0.0], [1.0], [2.5], [-0.9], [np.nan]])
    assert coverage(r, np.array([NU_MAX]), 1).tolist() == [0.75]  # NaN rows are left out
    assert coverage(r, np.array([NU_MAX]), 2).tolist() == [0.75]
    assert coverage(r, np.array([NU_MAX]), 3).tolist() == [1.0]
    # a t of 3 dof has a wider 2-sigma interval in units of its 1-sigma: 2.5 is inside it
    t3 = stats.t(3)
    assert interval_factor(3.0, 2) == pytest.approx(t3.ppf(0.97725) / t3.ppf(0.841345), rel=1e-4)
    assert coverage(r, np.array([3.0]), 2).tolist() == [1.0]
    assert float(gaussian_coverage(1.0)) == pytest.approx(0.682689, abs=1e-6)


@pytest.mark.parametrize("nu", [2.5, 5.0, 1e6])
def test_fit_t_recovers_scale_and_shape_and_fixes_1_2_3_sigma(nu):
    rng = np.random.default_rng(0)
    draw = (lambda n: rng.standard_t(nu, n)) if nu < 1e5 else (lambda n: rng.normal(0, 1, n))
    r = 2.5 * draw(40_000)
    scale, fitted = fit_t(r)
    one = stats.t.ppf(0.841345, nu) if nu < 1e5 else 1.0
    assert scale == pytest.approx(2.5 * one, rel=0.03)
    assert fitted == (pytest.approx(nu, rel=0.2) if nu < 1e5 else NU_MAX)
    held_out = 2.5 * draw(40_000) / scale
    for k in (1, 2, 3):
        assert coverage(held_out[:, None], np.array([fitted]), k)[0] == pytest.approx(
            gaussian_coverage(k), abs=0.01)
    u = pit(held_out[:, None], np.array([fitted]))
    assert stats.kstest(u[:, 0], "uniform").statistic < 0.012


def test_a_gaussian_of_the_right_width_misses_heavy_tails():
    """The failure the t shape fixes: one scale per target gets 1 sigma right and 2-3 sigma wrong."""
    rng = np.random.default_rng(1)
    r = rng.standard_t(3, 20_000)
    scale = np.quantile(np.abs(r), gaussian_coverage(1.0))
    gauss = assess(["x"], r[:, None], np.zeros((len(r), 1)), np.full((len(r), 1), scale))
    assert gauss.coverage[1][0] == pytest.approx(0.683, abs=0.01)
    assert gauss.coverage[2][0] < 0.935 and gauss.coverage[3][0] < 0.985
    s, nu = fit_t(r)
    t = assess(["x"], r[:, None], np.zeros((len(r), 1)), np.full((len(r), 1), s), np.array([nu]))
    assert t.coverage[2][0] == pytest.approx(0.9545, abs=0.005)
    assert t.coverage[3][0] == pytest.approx(0.9973, abs=0.003)
    assert t.pit_ks[0] < t.ks_critical


def test_assess_measures_rank_correlation_of_error_and_std():
    rng = np.random.default_rng(2)
    std = rng.uniform(0.1, 2.0, (5000, 2))
    err = rng.normal(0, 1, (5000, 2)) * np.column_stack([std[:, 0], np.full(5000, 1.0)])
    a = assess(["informative", "constant"], err, np.zeros_like(err), std)
    assert a.spearman[0] > 0.5 and abs(a.spearman[1]) < 0.05
    assert "informative" in a.table() and "Spearman" in a.table()


def test_fit_calibration_fits_on_one_part_and_assesses_the_other():
    rng = np.random.default_rng(3)
    n = 4000
    mean = rng.normal(0, 1, (n, 7))
    std = rng.uniform(0.1, 0.5, (n, 7))
    true = mean + std * 3.0 * rng.standard_t(4, (n, 7))
    fit = split_objects(np.arange(n), 0.5, seed=0)
    result = fit_calibration(TARGETS, true, mean, std, fit)
    assert result.n_fit == 2000 and result.after.n == 2000
    np.testing.assert_allclose(result.scale, 3.0 * stats.t.ppf(0.841345, 4), rtol=0.08)
    assert (result.before.coverage[1] < 0.35).all()
    np.testing.assert_allclose(result.after.coverage[1], 0.683, atol=0.03)
    np.testing.assert_allclose(result.after.coverage[2], 0.954, atol=0.015)
    assert result.null is not None and len(result.null["center"]) == 6  # latents only, not z


def test_split_objects_by_fraction_and_by_file(tmp_path):
    ids = np.arange(1000, 1100)
    fit = split_objects(ids, 0.3, seed=1)
    assert fit.sum() == 30
    np.testing.assert_array_equal(fit, split_objects(ids, 0.3, seed=1))
    (tmp_path / "fit.txt").write_text("# validation ids\n" + "\n".join(str(i) for i in range(1000, 1050)))
    assert np.flatnonzero(split_objects(ids, split_file=tmp_path / "fit.txt")).tolist() == list(range(50))
    with pytest.raises(InputError, match="need at least 10"):
        split_objects(ids, 0.05)


# -- on a real catalog ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny_store, tmp_path_factory):
    """A checkpoint of our own (calibration.json goes into it), its catalog, and labels whose
    scatter around the predictions is 3x the predicted std with t(4) tails."""
    root = tmp_path_factory.mktemp("calibrate")
    ckpt = make_tiny_checkpoint(root / "ckpt")
    make_tiny_catalog(tiny_store, ckpt, root / "cat", mc_samples=8)
    t = read_catalog(root / "cat")
    rng = np.random.default_rng(0)
    cols = {"object_id": t["object_id"]}
    for name in [f"latent_{i}" for i in range(1, 7)] + ["z_phot"]:
        m, s = t[name].to_numpy(), t[f"{name}_std"].to_numpy()
        value = m + 3.0 * s * rng.standard_t(4, len(m))
        if name == "z_phot":  # a redshift is not negative (rare here: z_phot is about 0.5 +- 0.1)
            name, value = "z", np.abs(value)
        cols[name] = pa.array(value.astype(np.float32))
    pq.write_table(pa.table(cols), root / "labels.parquet")
    return root / "ckpt", root / "cat", root / "labels.parquet"


def test_calibrate_catalog_writes_calibration_json(setup, tmp_path):
    ckpt0, cat, labels = setup
    ckpt = shutil.copytree(ckpt0, tmp_path / "ckpt")
    report = calibrate_catalog(cat, labels, ckpt, fraction=0.5, seed=0)
    assert report.fit.n_fit == 120 and report.fit.after.n == 120 and report.n_trained == 0
    assert report.fit.targets == TARGETS
    np.testing.assert_allclose(report.fit.scale, 3.0 * stats.t.ppf(0.841345, 4), rtol=0.3)
    assert (report.fit.before.coverage[1] < 0.45).all()
    np.testing.assert_allclose(report.fit.after.coverage[1], 0.683, atol=0.12)
    doc = load_calibration(ckpt)
    assert doc.scale == pytest.approx(report.fit.scale.tolist()) and doc.targets == tuple(TARGETS)
    assert doc.fitted_on["n_fit"] == 120 and doc.mc_samples == 8 and doc.anomaly["n"] == 120
    assert doc.assessment["after"]["coverage"]["2"] == pytest.approx(report.fit.after.coverage[2].tolist())
    assert "latent_1" in report.table() and "2-sigma" in report.table()
    # a calibration for other weights is refused
    (ckpt / CALIBRATION_FILE).write_text(json.dumps({**doc.to_dict(), "model_hash": "0" * 64}))
    with pytest.raises(FormatError, match="other weights"):
        load_calibration(ckpt)
    assert load_calibration(ckpt0) is None


def test_a_calibrated_catalog_is_recalibrated_from_the_networks_own_spread(setup, tiny_store, tmp_path):
    ckpt0, cat, labels = setup
    ckpt = shutil.copytree(ckpt0, tmp_path / "ckpt")
    first = calibrate_catalog(cat, labels, ckpt, seed=0)
    calibrated = make_tiny_catalog(tiny_store, ckpt, tmp_path / "calibrated", mc_samples=8)
    second = calibrate_catalog(calibrated, labels, ckpt, seed=0, write=False)
    np.testing.assert_allclose(second.fit.scale, first.fit.scale, rtol=1e-5)


def test_objects_the_network_trained_on_are_refused_or_left_out(setup, tmp_path):
    ckpt0, cat, labels = setup
    ckpt = shutil.copytree(ckpt0, tmp_path / "ckpt")
    ids = read_catalog(cat)["object_id"].to_numpy()
    write_split(ckpt, ids[:40], ids[40:60])
    assert [a.tolist() for a in read_split(ckpt)] == [ids[:40].tolist(), ids[40:60].tolist()]
    with pytest.raises(InputError, match="40 of the 240 labelled objects .* training split"):
        calibrate_catalog(cat, labels, ckpt)
    report = calibrate_catalog(cat, labels, ckpt, exclude_trained=True)
    assert (report.n_trained, report.n_validation) == (40, 20)
    assert report.fit.n_fit + report.fit.after.n == 200
    assert "40 from the network's training split left out" in report.table()


def test_calibrate_refuses_a_catalog_of_another_model(setup, tmp_path):
    _, cat, labels = setup
    other = make_tiny_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(InputError, match="was predicted by model"):
        calibrate_catalog(cat, labels, other)
    assert not (other / CALIBRATION_FILE).exists()


def test_cli_calibrate(setup, tmp_path):
    ckpt0, cat, labels = setup
    ckpt = shutil.copytree(ckpt0, tmp_path / "ckpt")
    args = ["calibrate", str(cat), "--labels", str(labels), "--checkpoint", str(ckpt)]
    res = CliRunner().invoke(main, [*args, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "before (the network's own spread" in res.output and not (ckpt / CALIBRATION_FILE).exists()
    res = CliRunner().invoke(main, [*args, "--fraction", "0.6", "--plot", str(tmp_path / "calib.png")])
    assert res.exit_code == 0, res.output
    assert load_calibration(ckpt).fitted_on["n_fit"] == 144
    assert (tmp_path / "calib.png").stat().st_size > 20_000
    res = CliRunner().invoke(main, [*args, "--fraction", "1.5"])
    assert res.exit_code == 2 and res.output.startswith("galspec: error: Invalid value for '--fraction': 1.5")
    assert res.output.count("\n") == 1
