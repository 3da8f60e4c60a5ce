"""The non-image baselines and the shared metrics: hand-computed scores, bootstrap intervals, a
colour model that learns a known function, and the whole comparison on the mock survey."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galspec_batch.baselines import (
    COLOUR,
    MEAN,
    compare_baselines,
    feature_matrix,
    fit_colour_model,
    mean_model,
    model_features,
    read_targets,
)
from galspec_batch.errors import InputError
from galspec_batch.metrics import (
    bootstrap_ci,
    nmad,
    outlier_fraction,
    photoz_metrics,
    redshift_error,
    rmse,
)
from galspec_batch.photometry import measure_photometry
from galspec_batch.simulate import simulate_survey


def test_rmse_nmad_and_outliers_by_hand():
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))
    np.testing.assert_allclose(rmse([[0, 1], [0, 3]], [[0, 0], [0, 0]], axis=0), [0, np.sqrt(5)])
    # median 3, |x - 3| = 2 1 0 1 97, median 1: the 100 does not count
    assert nmad([1, 2, 3, 4, 100]) == pytest.approx(1.4826)
    assert nmad(np.random.default_rng(0).normal(5, 2, 200_000)) == pytest.approx(2, rel=0.01)
    assert outlier_fraction([0.1, -0.2, 0.16, 0.0, 0.15]) == pytest.approx(2 / 5)  # 0.15 itself is not
    assert redshift_error([0.3, 0.1], [0.2, 0.1]) == pytest.approx([0.1 / 1.2, 0.0])
    with pytest.raises(InputError, match="1 predicted and 0 true redshifts are not finite"):
        photoz_metrics(np.array([0.1, np.nan]), np.array([0.1, 0.2]))  # never a plausible NMAD from NaN


def test_photoz_metrics_by_hand():
    z = np.array([0.1, 0.1, 0.2, 0.2, 0.5])
    z_pred = z + np.array([0.011, -0.011, 0.024, 0.0, 0.6]) * (1 + z)  # dz as given, one outlier
    m = photoz_metrics(z_pred, z)
    assert m.n == 5 and m.outlier_fraction == pytest.approx(0.2)
    assert m.bias == pytest.approx(0.011)  # median of -0.011 0 0.011 0.024 0.6
    assert m.nmad == pytest.approx(1.4826 * 0.013)  # |dz - 0.011| = .022 .011 0 .013 .589
    with pytest.raises(InputError, match="shapes"):
        photoz_metrics(z_pred[:3], z)


def test_bootstrap_interval_covers_the_truth_about_as_often_as_it_says():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, 2000)
    low, high = bootstrap_ci(lambda i: rmse(x[i], 0), len(x), n_boot=500, seed=0)
    assert low < 2 < high and high - low < 0.15
    again = bootstrap_ci(lambda i: rmse(x[i], 0), len(x), n_boot=500, seed=0)
    assert (low, high) == again
    covered = []
    for _ in range(150):
        y = rng.normal(0, 1, 200)
        seed = int(rng.integers(1 << 30))
        lo, hi = bootstrap_ci(lambda i, y=y: rmse(y[i], 0), len(y), n_boot=300, seed=seed)
        covered.append(lo < 1 < hi)
    assert 0.55 < np.mean(covered) < 0.8  # nominal 0.683
    lo, hi = bootstrap_ci(lambda i: np.array([x[i].mean(), x[i].std()]), len(x), n_boot=200)
    assert lo.shape == (2,) and lo[0] < 0 < hi[0] and lo[1] < 2 < hi[1]
    with pytest.raises(InputError, match="n_boot"):
        bootstrap_ci(lambda i: 0.0, 10, n_boot=1)


def _known_function(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 4))
    y = np.stack([np.sin(3 * x[:, 0]) + x[:, 1] ** 2, x[:, 2] - 2 * x[:, 3]], axis=1)
    return x, y + rng.normal(0, 0.05, y.shape)


def test_colour_model_learns_a_known_function_and_beats_the_mean():
    x, y = _known_function(3000, 0)
    x[np.random.default_rng(2).uniform(size=x.shape) < 0.03] = np.nan  # missing features are allowed
    tr, va = slice(0, 2400), slice(2400, None)
    colour = fit_colour_model(x[tr], y[tr], seed=0).predict(x[va])
    mean = mean_model(y[tr]).predict(x[va])
    assert colour.shape == mean.shape == (600, 2)
    np.testing.assert_allclose(mean, np.tile(y[tr].mean(axis=0), (600, 1)))
    err_colour, err_mean = rmse(colour, y[va], axis=0), rmse(mean, y[va], axis=0)
    assert (err_colour < 0.3 * err_mean).all()
    same = fit_colour_model(x[tr], y[tr], seed=0).predict(x[va])
    np.testing.assert_array_equal(colour, same)  # fixed seed, same model


def test_colour_model_refuses_bad_input():
    x, y = _known_function(50, 1)
    with pytest.raises(InputError, match="NaN or infinite"):
        fit_colour_model(x, np.where(np.arange(50)[:, None] == 3, np.nan, y))
    with pytest.raises(InputError, match="infinite"):
        fit_colour_model(np.where(x > 0.9, np.inf, x), y)
    with pytest.raises(InputError, match="shape"):
        fit_colour_model(x, y[:40])
    with pytest.raises(InputError, match="fitted on 4"):
        fit_colour_model(x, y[:, 0]).predict(x[:, :3])


def _write_labels(path, ids, latents, z=None):
    cols = {"object_id": pa.array(np.asarray(ids, np.int64))}
    cols.update({f"latent_{i + 1}": pa.array(np.asarray(v, np.float32)) for i, v in enumerate(latents)})
    if z is not None:
        cols["z"] = pa.array(np.asarray(z, np.float64))
    pq.write_table(pa.table(cols), path)
    return path


def test_read_targets_adds_the_redshift_and_checks_it(tmp_path):
    ids = np.arange(4)
    t = read_targets(_write_labels(tmp_path / "a.parquet", ids, [ids * 1.0], z=[0.1, 0.2, 0.3, 0.4]))
    assert t.names == ["latent_1", "z"] and t.values.shape == (4, 2)
    np.testing.assert_allclose(t.values[:, 1], [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    assert read_targets(_write_labels(tmp_path / "b.parquet", ids, [ids * 1.0])).names == ["latent_1"]
    with pytest.raises(InputError, match=r"c.parquet has 1 redshifts that are missing.*object_id \[2\]"):
        read_targets(_write_labels(tmp_path / "c.parquet", ids, [ids * 1.0], z=[0.1, 0.2, np.nan, 0.4]))


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    """600 mock galaxies at 32 px, their photometry and a labels table of truth values and z."""
    d = tmp_path_factory.mktemp("baseline")
    simulate_survey(d / "m.zarr", d / "m.parquet", 600, image_size=32, seed=4)
    truth = pq.read_table(d / "m.parquet", columns=["object_id", "z", "truth_bulge_frac", "truth_abs_mag_r"])
    labels = _write_labels(d / "labels.parquet", truth["object_id"].to_numpy(),
                           [truth["truth_bulge_frac"].to_numpy(), truth["truth_abs_mag_r"].to_numpy()],
                           z=truth["z"].to_numpy())
    ids = truth["object_id"].to_numpy()
    perm = np.random.default_rng(0).permutation(len(ids))
    return d / "m.zarr", labels, ids[perm[:450]], ids[perm[450:]], measure_photometry(d / "m.zarr")


def test_colour_model_beats_the_mean_on_the_mock_survey(mock):
    store, labels, train, val, features = mock
    report = compare_baselines(store, labels, train, val, seed=0, features=features, n_boot=300)
    assert (report.n_train, report.n_val) == (450, 150)
    z_colour, z_mean = report.score("z", COLOUR), report.score("z", MEAN)
    assert z_colour.photoz.nmad < 0.65 * z_mean.photoz.nmad  # 0.030 against 0.056
    assert z_colour.rmse < 0.75 * z_mean.rmse and z_colour.rmse_high < z_mean.rmse_low
    assert 0.85 < z_mean.rmse < 1.2  # the mean's RMSE in units of the training std is about 1
    for s in report.scores:
        assert s.rmse_low < s.rmse < s.rmse_high
        assert (s.photoz is not None) == (s.target == "z")
    assert report.score("latent_2", COLOUR).rmse < 0.85  # absolute magnitude (0.72): flux and redshift
    assert report.latent_rmse[COLOUR] < report.latent_rmse[MEAN]
    lo, hi = report.latent_interval[COLOUR]
    assert lo < report.latent_rmse[COLOUR] < hi
    table = report.table()
    assert table.num_rows == 6 and table.column_names[:3] == ["target", "model", "rmse"]
    assert "z: colour" in str(report) and "NMAD" in str(report)


def test_comparison_measures_photometry_itself_when_not_given(mock):
    store, labels, train, val, features = mock
    given = compare_baselines(store, labels, train[:200], val[:60], features=features, n_boot=50)
    measured = compare_baselines(store, labels, train[:200], val[:60], n_boot=50)
    np.testing.assert_allclose(given.table()["rmse"].to_numpy(), measured.table()["rmse"].to_numpy(),
                               rtol=1e-6)


def test_comparison_refuses_bad_splits(mock):
    store, labels, train, val, features = mock
    with pytest.raises(InputError, match="in both the training and the validation split"):
        compare_baselines(store, labels, train, np.concatenate([val, train[:3]]), features=features)
    with pytest.raises(InputError, match=r"not in labels table .*object_id \[-5\]"):
        compare_baselines(store, labels, train, np.append(val, -5), features=features)


def test_model_features_drop_raw_fluxes(mock):
    features = mock[4]
    names = model_features(features)
    assert "mag_total_r" in names and "r50" in names and "object_id" not in names
    assert not any(n.startswith("flux_") for n in names)
    assert feature_matrix(features).shape == (features.num_rows, len(names))
