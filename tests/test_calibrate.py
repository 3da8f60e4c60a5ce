"""Coverage of the MC intervals, scale calibration, calibration.json and `galspec calibrate`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import make_tiny_catalog, make_tiny_checkpoint

from galspec_batch.calibrate import ONE_SIGMA, calibrate_catalog, coverage, fit_scale, split_objects
from galspec_batch.catalog import read_catalog
from galspec_batch.checkpoint import CALIBRATION_FILE, load_calibration
from galspec_batch.cli import main
from galspec_batch.errors import FormatError, InputError

FACTORS = np.array([0.5, 1.0, 2.0, 4.0])


def _gaussian(n, seed):
    """MC std off by FACTORS: the true latents scatter FACTORS * std around the means."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 1, (n, len(FACTORS)))
    std = rng.uniform(0.1, 0.5, mean.shape)
    return mean + rng.normal(0, 1, mean.shape) * std * FACTORS, mean, std


def test_coverage_counts_hand_example():
    true = np.array([[0.0], [1.0], [2.5], [-0.9]])
    cov, expected = coverage(true, np.zeros((4, 1)), np.ones((4, 1)))
    assert cov.tolist() == [0.75] and expected == pytest.approx(0.682689, abs=1e-6)
    cov2, expected2 = coverage(true, np.zeros((4, 1)), np.ones((4, 1)), k=2)
    assert cov2.tolist() == [0.75] and expected2 == pytest.approx(0.954500, abs=1e-6)
    # std = 0 or NaN rows are left out, not counted as misses
    cov3, _ = coverage(np.array([0.0, 5.0]), np.zeros(2), np.array([1.0, 0.0]))
    assert cov3.tolist() == [1.0]


@pytest.mark.parametrize("method", ["likelihood", "robust"])
def test_fit_scale_recovers_the_factor_and_calibrates_coverage(method):
    true, mean, std = _gaussian(20000, 0)
    scale = fit_scale(true, mean, std, method)
    np.testing.assert_allclose(scale, FACTORS, rtol=0.03)
    before, _ = coverage(true, mean, std)
    assert before[0] > 0.9 and before[-1] < 0.25  # over- and under-estimated
    t2, m2, s2 = _gaussian(20000, 1)  # held out
    after, expected = coverage(t2, m2, s2 * scale)
    np.testing.assert_allclose(after, ONE_SIGMA, atol=0.02)
    assert expected == pytest.approx(ONE_SIGMA)


def test_robust_scale_ignores_a_few_wild_objects():
    true, mean, std = _gaussian(5000, 2)
    true[:50] += 100.0
    assert fit_scale(true, mean, std, "likelihood")[0] > 10
    np.testing.assert_allclose(fit_scale(true, mean, std, "robust"), FACTORS, rtol=0.06)
    with pytest.raises(InputError, match="unknown calibration method"):
        fit_scale(true, mean, std, "magic")


def test_split_objects_by_fraction_and_by_file(tmp_path):
    ids = np.arange(1000, 1100)
    fit = split_objects(ids, 0.3, seed=1)
    assert fit.sum() == 30
    np.testing.assert_array_equal(fit, split_objects(ids, 0.3, seed=1))
    (tmp_path / "fit.txt").write_text("# validation ids\n1000\n1001\n1050\n")
    assert np.flatnonzero(split_objects(ids, split_file=tmp_path / "fit.txt")).tolist() == [0, 1, 50]
    with pytest.raises(InputError, match="need at least 2"):
        split_objects(ids, 0.001)


# -- on a real catalog ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny_store, tmp_path_factory):
    """A checkpoint of our own (calibration.json goes into it), its catalog, and labels whose
    scatter around the predictions is 3x the MC std."""
    root = tmp_path_factory.mktemp("calibrate")
    ckpt = make_tiny_checkpoint(root / "ckpt")
    make_tiny_catalog(tiny_store, ckpt, root / "cat", mc_samples=8)
    t = read_catalog(root / "cat")
    rng = np.random.default_rng(0)
    cols = {"object_id": t["object_id"]}
    for i in range(1, 7):
        m, s = t[f"latent_{i}"].to_numpy(), t[f"latent_{i}_std"].to_numpy()
        cols[f"latent_{i}"] = pa.array((m + 3.0 * s * rng.normal(0, 1, len(m))).astype(np.float32))
    pq.write_table(pa.table(cols), root / "labels.parquet")
    return root / "ckpt", root / "cat", root / "labels.parquet"


def test_calibrate_catalog_writes_calibration_json(setup, tmp_path):
    ckpt0, cat, labels = setup
    ckpt = shutil.copytree(ckpt0, tmp_path / "ckpt")
    report = calibrate_catalog(cat, labels, ckpt, fraction=0.5, seed=0)
    assert report.n_fit == 120 and report.n_test == 120
    np.testing.assert_allclose(report.scale, 3.0, rtol=0.2)
    assert (report.coverage_before < 0.4).all()
    np.testing.assert_allclose(report.coverage_after, ONE_SIGMA, atol=0.15)
    doc = load_calibration(ckpt)
    assert doc.scale == pytest.approx(report.scale.tolist())
    assert doc.latent_names == tuple(f"latent_{i}" for i in range(1, 7))
    assert doc.method == "robust" and doc.data["n_fit"] == 120 and doc.created
    assert "latent_1" in report.table() and f"{report.scale[0]:.3f}" in report.table()
    # a calibration for other weights is refused
    (ckpt / CALIBRATION_FILE).write_text(json.dumps({**doc.to_dict(), "model_hash": "0" * 64}))
    with pytest.raises(FormatError, match="other weights"):
        load_calibration(ckpt)
    assert load_calibration(ckpt0) is None


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
    assert "cov. before" in res.output and not (ckpt / CALIBRATION_FILE).exists()
    res = CliRunner().invoke(main, [*args, "--fraction", "0.6", "--method", "robust",
                                    "--plot", str(tmp_path / "calib.png")])
    assert res.exit_code == 0, res.output
    assert load_calibration(ckpt).data["n_fit"] == 144
    assert (tmp_path / "calib.png").stat().st_size > 20_000
    res = CliRunner().invoke(main, [*args, "--fraction", "1.5"])
    assert res.exit_code == 2 and res.output.startswith("galspec: error: Invalid value for '--fraction': 1.5")
    assert res.output.count("\n") == 1
