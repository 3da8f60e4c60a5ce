"""Anomaly scores: Mahalanobis against observed latents, out-of-distribution score, ROC AUC, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from scipy import stats

from galspec_batch.anomalies import (
    NullModel,
    fit_null,
    flag_anomalies,
    ood_scores,
    robust_covariance,
    roc_auc,
)
from galspec_batch.catalog import read_catalog
from galspec_batch.catalog.joins import match_ids
from galspec_batch.cli import main
from galspec_batch.columns import QualityFlag
from galspec_batch.errors import FormatError, InputError
from galspec_batch.spectra import N_BINS
from galspec_batch.spectra_table import spectra_to_table, write_spectra_table

P = 6


def _residuals(n, rate=0.0, seed=0, nu=4.0):
    """Standardised latent residuals of normal galaxies (correlated, t tails), a fraction ``rate``
    displaced far (anomalies)."""
    a = np.random.default_rng(100).normal(0, 0.4, (P, P))  # one population: the same correlations
    rng = np.random.default_rng(seed)
    corr = a @ a.T + np.eye(P)
    d = np.sqrt(np.diag(corr))
    corr = corr / d[:, None] / d[None, :]
    chi = np.sqrt(rng.chisquare(nu, n) / nu)[:, None]
    r = rng.multivariate_normal(np.zeros(P), corr, n) / chi
    anomaly = rng.random(n) < rate
    r[anomaly] += rng.normal(0, 6, (anomaly.sum(), P))
    return r, anomaly


def test_roc_auc_matches_hand_values_and_handles_ties():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    # pairs (pos, neg): (2,1)=1, (2,2)=1/2, (3,1)=1, (3,2)=1 -> 3.5 / 4
    assert roc_auc(np.array([1.0, 2, 2, 3]), np.array([0, 1, 0, 1], bool)) == 0.875
    assert roc_auc(np.array([5.0, 5, 5]), np.array([1, 0, 0], bool)) == 0.5
    assert np.isnan(roc_auc(np.array([1.0, 2]), np.array([1, 1], bool)))


def test_match_ids():
    np.testing.assert_array_equal(match_ids(np.array([5, 3, 9]), np.array([9, 4, 3, 5, 100, -1])),
                                  [2, -1, 1, 0, -1, -1])
    assert match_ids(np.array([], np.int64), np.array([1])).tolist() == [-1]


def test_null_model_pvalues_hold_at_every_alpha_whatever_the_tails():
    """Fitted on galaxies with 1% anomalies among them, the false-flag rate on new normal galaxies is
    about alpha, down to alpha far below 1 / n (the F tail), although d2 is far from chi2 here."""
    fresh, _ = _residuals(400_000, seed=2)
    for seed in (1, 5):
        null = fit_null(_residuals(4000, rate=0.01, seed=seed)[0])
        assert null.tail_nu == pytest.approx(4.0, rel=0.15)  # t(4) residuals: d2 / s ~ F(6, 4)
        p = null.pvalues(null.scores(fresh))
        assert (p < 0.05).mean() == pytest.approx(0.05, rel=0.15)
        for alpha in (0.01, 1e-3, 1e-4):
            assert 0.3 * alpha < (p < alpha).mean() < 1.5 * alpha
    assert (stats.chi2.sf(null.scores(fresh), P) < 1e-3).mean() > 5e-3  # chi2 p-values would not hold
    r, anomaly = _residuals(5000, rate=0.03, seed=3)
    d2 = null.scores(r)
    assert roc_auc(d2, anomaly) > 0.95
    assert (null.pvalues(d2)[anomaly] < 0.01).mean() > 0.8  # t(4) tails: a 1e-3 flag needs a far outlier


def test_null_model_round_trip_and_damage():
    null = fit_null(_residuals(500, seed=4)[0])
    again = NullModel.from_dict(null.to_dict(), "here")
    d2 = np.array([0.5, 5.0, 50.0, np.nan])
    np.testing.assert_array_equal(again.pvalues(d2), null.pvalues(d2))
    assert null.pvalues(np.array([0.0]))[0] == 1.0 and np.isnan(null.pvalues(d2)[3])
    p = null.pvalues(np.linspace(0, 1e4, 4000))
    assert np.all(np.diff(p) <= 0) and p[-1] < 1e-3  # a heavy (t4) tail falls slowly
    with pytest.raises(FormatError, match="damaged"):
        NullModel.from_dict({**null.to_dict(), "quantiles": [1.0, 0.0]}, "here")
    with pytest.raises(FormatError, match="damaged"):
        NullModel.from_dict({k: v for k, v in null.to_dict().items() if k != "tail_nu"}, "here")
    with pytest.raises(InputError, match="at least 50 objects"):
        fit_null(_residuals(30)[0])


def test_robust_covariance_is_consistent_for_gaussian_data():
    rng = np.random.default_rng(3)
    cov = np.array([[2.0, 0.6], [0.6, 0.5]])
    center, est, _ = robust_covariance(rng.multivariate_normal([1.0, -2.0], cov, 5000))
    np.testing.assert_allclose(center, [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(est, cov, rtol=0.06, atol=0.03)


def test_ood_score_ranks_far_outliers_and_large_uncertainty_first():
    rng = np.random.default_rng(1)
    mean = np.concatenate([rng.normal(0, 1, (500, P)), rng.normal(0, 1, (4, P)) + 9])
    std = np.full_like(mean, 0.1)
    std[10] = 2.0  # one object the model is very unsure of
    score = ood_scores(mean, std)
    top = set(np.argsort(score)[-5:].tolist())
    assert top == {500, 501, 502, 503, 10}
    assert abs(np.median(score[:500])) < 0.2 and np.percentile(score[:500], 99) < 5
    # a row without a finite prediction (BAD_PREDICTION: nulls) gets no score and changes no other
    nan_row = np.full((1, P), np.nan)
    with_bad = ood_scores(np.concatenate([mean, nan_row]), np.concatenate([std, nan_row]))
    assert np.isnan(with_bad[-1]) and np.array_equal(with_bad[:-1], score)


def _catalog_table(mean, std):
    n = len(mean)
    cols = {"object_id": np.arange(100, 100 + n), "ra": np.linspace(10, 11, n), "dec": np.zeros(n)}
    cols.update({f"latent_{i + 1}": mean[:, i] for i in range(P)})
    cols.update({f"latent_{i + 1}_std": std[:, i] for i in range(P)})
    cols["quality_flags"] = np.where(np.arange(n) == 0, 1, 0).astype(np.uint16)
    return pa.Table.from_pandas(pd.DataFrame(cols), preserve_index=False)


def test_flag_anomalies_table_uses_labels_where_present_and_sets_the_quality_bit():
    rng = np.random.default_rng(0)
    r, anomaly = _residuals(1000, rate=0.02, seed=5, nu=1e6)  # Gaussian: anomalies stand out at 1e-3
    mean, std = rng.normal(0, 1, (1000, P)), rng.uniform(0.05, 0.3, (1000, P))
    obs = mean + r * std
    table = _catalog_table(mean, std)
    labelled = np.arange(0, 1000, 2)  # only every other object has a spectrum
    lab = (table["object_id"].to_numpy()[labelled], obs[labelled])
    with pytest.raises(InputError, match="null model"):
        flag_anomalies(table, lab)
    out = flag_anomalies(table, lab, null=fit_null(_residuals(3000, seed=6, nu=1e6)[0]), alpha=1e-3)
    assert out.column_names == ["object_id", "ra", "dec", "anomaly_score", "anomaly_pvalue", "ood_score",
                                "flag", "quality_flags"]
    pval = out["anomaly_pvalue"].to_numpy(zero_copy_only=False)
    assert np.isfinite(pval[labelled]).all() and np.isnan(pval[1::2]).all()
    flag = out["flag"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(flag[labelled], pval[labelled] < 1e-3)
    np.testing.assert_array_equal(flag[1::2], out["ood_score"].to_numpy()[1::2] > 5.0)
    assert flag[labelled][anomaly[labelled]].mean() > 0.6 and flag[labelled][~anomaly[labelled]].mean() < 0.01
    qf = out["quality_flags"].to_numpy()
    np.testing.assert_array_equal((qf & QualityFlag.OUT_OF_DISTRIBUTION) > 0, flag)
    assert qf[0] & QualityFlag.NAN_PIXELS  # the catalog's own bits are kept


# -- end to end on a real catalog -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tiny_store, tmp_path_factory):
    """A catalog predicted with a calibration (and its anomaly null model) fitted on labels that
    scatter around the predictions by their std."""
    from conftest import make_tiny_catalog, make_tiny_checkpoint

    from galspec_batch.calibrate import calibrate_catalog

    root = tmp_path_factory.mktemp("anomalies")
    ckpt = make_tiny_checkpoint(root / "ckpt")
    raw = make_tiny_catalog(tiny_store, ckpt, root / "raw")
    labels, _ = _labels(raw, root / "fit.parquet", n_far=0, seed=9, spread=None)
    calibrate_catalog(raw, labels, ckpt, fraction=0.9)
    return make_tiny_catalog(tiny_store, ckpt, root / "cat")


def _labels(tiny_catalog, path, n_latents=P, drop_id=False, id_offset=0, seed=0, n_far=5, spread=0.3):
    """A labels table for the catalog's objects: observed = predicted + noise, the first 5 displaced far;
    also a spectra table with truth_anomaly for them. Returns (labels path, spectra path)."""
    t = read_catalog(tiny_catalog).sort_by("object_id")
    rng = np.random.default_rng(seed)
    ids = t["object_id"].to_numpy()
    mean = np.stack([t[f"latent_{i}"].to_numpy() for i in range(1, P + 1)], axis=1)
    std = np.stack([t[f"latent_{i}_std"].to_numpy() for i in range(1, P + 1)], axis=1)
    obs = mean + rng.normal(0, 1, mean.shape) * (std if spread is None else spread)
    obs[:n_far] += 20 * std[:n_far]
    cols = {} if drop_id else {"object_id": ids + id_offset}
    cols.update({f"latent_{i + 1}": obs[:, i % P].astype(np.float32) for i in range(n_latents)})
    z = t["z_phot"].to_numpy() + rng.normal(0, 1, len(ids)) * t["z_phot_std"].to_numpy()
    cols["z"] = np.abs(z).astype(np.float32)
    pq.write_table(pa.table(cols), path)
    n = len(ids)
    spectra = spectra_to_table(ids, t["ra"].to_numpy(), t["dec"].to_numpy(), np.full(n, 0.1),
                               np.ones((n, N_BINS)), np.ones((n, N_BINS)),
                               extra={"truth_anomaly": np.arange(n) < 5})
    write_spectra_table(path.with_suffix(".spectra.parquet"), spectra)
    return path, path.with_suffix(".spectra.parquet")


def test_cli_anomalies_writes_flags_and_reports_auc(calibrated, tiny_catalog, tmp_path):
    labels, spectra = _labels(calibrated, tmp_path / "labels.parquet", spread=None, seed=1)
    out = tmp_path / "flagged.parquet"
    res = CliRunner().invoke(main, ["anomalies", str(calibrated), "--labels", str(labels), "--out", str(out),
                                    "--truth", str(spectra)])
    assert res.exit_code == 0, res.output
    flagged = pq.read_table(out)
    assert flagged.num_rows == 240
    assert "flagged" in res.output and "ROC AUC" in res.output
    auc = float(res.output.split("Mahalanobis ")[1].split(",")[0])
    assert auc > 0.95
    ids = flagged["object_id"].to_numpy()
    flag = flagged["flag"].to_numpy(zero_copy_only=False)
    first5 = np.sort(ids)[:5]
    assert flag[np.isin(ids, first5)].all() and flag.sum() <= 8
    from astropy.table import Table  # astropy reads the table with units and descriptions

    t = Table.read(out)
    assert str(t["ra"].unit) == "deg" and t["anomaly_pvalue"].description.startswith("p-value")
    assert t["quality_flags"].dtype == np.int32
    # an uncalibrated catalog gets no p-values
    res = CliRunner().invoke(main, ["anomalies", str(tiny_catalog), "--labels", str(labels), "--out",
                                    str(tmp_path / "u.parquet")])
    assert res.exit_code == 1 and "without a calibrated anomaly null model" in res.output
    # without labels: only the out-of-distribution score
    res = CliRunner().invoke(main, ["anomalies", str(tiny_catalog), "--out", str(tmp_path / "ood.parquet")])
    assert res.exit_code == 0, res.output
    d2 = pq.read_table(tmp_path / "ood.parquet")["anomaly_score"]
    assert d2.null_count == len(d2)  # undefined scores are null, never NaN
    # an existing output is kept without --overwrite
    res = CliRunner().invoke(main, ["anomalies", str(tiny_catalog), "--out", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output


@pytest.mark.parametrize("bad, message", [
    ({"drop_id": True}, "no object_id column"),
    ({"id_offset": 10**9}, "is in the catalog"),
    ({"n_latents": 5}, "labels have 5 latents but the catalog has 6"),
])
def test_cli_anomalies_bad_labels_give_one_line_errors(calibrated, tmp_path, bad, message):
    labels, _ = _labels(calibrated, tmp_path / "labels.parquet", **bad)
    res = CliRunner().invoke(main, ["anomalies", str(calibrated), "--labels", str(labels),
                                    "--out", str(tmp_path / "f.parquet")])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galspec: error:") and message in lines[0], res.output
    assert not (tmp_path / "f.parquet").exists()


def test_anomalies_say_how_many_labelled_objects_the_network_trained_on(calibrated, tmp_path):
    from galspec_batch.catalog import read_provenance
    from galspec_batch.checkpoint import SPLIT_FILE, write_split

    labels, _ = _labels(calibrated, tmp_path / "labels.parquet", spread=None, seed=2)
    ckpt = Path(read_provenance(calibrated)["provenance"]["model"]["checkpoint"])
    ids = np.sort(read_catalog(calibrated)["object_id"].to_numpy())
    args = ["anomalies", str(calibrated), "--labels", str(labels), "--out"]
    res = CliRunner().invoke(main, [*args, str(tmp_path / "a.parquet")])
    assert res.exit_code == 0 and "trained on" not in res.output  # no split recorded: nothing to say
    write_split(ckpt, ids[:37], ids[37:60])
    try:
        res = CliRunner().invoke(main, [*args, str(tmp_path / "b.parquet")])
        assert res.exit_code == 0, res.output
        assert "the network trained on 37 of the labelled objects" in res.output
    finally:
        (ckpt / SPLIT_FILE).unlink()
