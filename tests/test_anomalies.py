"""Anomaly scores: Mahalanobis against observed latents, out-of-distribution score, ROC AUC, CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from scipy import stats

from galspec_batch.anomalies import (
    flag_anomalies,
    mahalanobis_scores,
    ood_scores,
    residual_model,
    robust_covariance,
    roc_auc,
)
from galspec_batch.catalog import read_catalog
from galspec_batch.catalog.joins import match_ids
from galspec_batch.cli import main
from galspec_batch.columns import QualityFlag
from galspec_batch.spectra import N_BINS
from galspec_batch.spectra_table import spectra_to_table, write_spectra_table

P = 6


def _population(n=3000, rate=0.02, seed=0):
    """Predicted means/stds, the true residual covariance S, observed = pred + noise, 2% displaced far."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 1, (n, P))
    std = rng.uniform(0.05, 0.3, (n, P))
    a = rng.normal(0, 0.3, (P, P))
    s = a @ a.T + 0.05 * np.eye(P)
    obs = mean + rng.normal(0, 1, (n, P)) * std + rng.multivariate_normal(np.zeros(P), s, n)
    anomaly = rng.random(n) < rate
    obs[anomaly] += rng.normal(0, 4, (anomaly.sum(), P))
    return mean, std, obs, anomaly, s


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


def test_mahalanobis_finds_injected_anomalies_and_pvalues_are_calibrated():
    mean, std, obs, anomaly, _ = _population()
    d2, pval = mahalanobis_scores(obs, mean, std)
    assert roc_auc(d2, anomaly) > 0.95
    # for normal objects d2 ~ chi2(6): the p-values are uniform
    assert np.median(d2[~anomaly]) == pytest.approx(stats.chi2.median(P), rel=0.06)
    assert (pval[~anomaly] < 0.05).mean() == pytest.approx(0.05, abs=0.015)
    assert (pval[anomaly] < 1e-3).mean() > 0.8


def test_robust_residual_covariance_is_not_inflated_by_anomalies():
    mean, std, obs, anomaly, s = _population(rate=0.05)
    model = residual_model(obs, mean, std)
    naive = np.cov((obs - mean).T) - np.diag((std**2).mean(axis=0))
    assert np.diag(naive).min() / np.diag(s).max() > 1  # the anomalies swamp the plain covariance
    np.testing.assert_allclose(np.diag(model.cov), np.diag(s), rtol=0.12)
    assert np.abs(model.cov - s).max() < 0.1
    assert np.all(np.linalg.eigvalsh(model.cov) >= -1e-12)
    assert model.inliers[anomaly].mean() < 0.1 and model.inliers[~anomaly].mean() > 0.95


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


def _catalog_table(mean, std):
    n = len(mean)
    cols = {"object_id": np.arange(100, 100 + n), "ra": np.linspace(10, 11, n), "dec": np.zeros(n)}
    cols.update({f"latent_{i + 1}": mean[:, i] for i in range(P)})
    cols.update({f"latent_{i + 1}_std": std[:, i] for i in range(P)})
    cols["quality_flags"] = np.where(np.arange(n) == 0, 1, 0).astype(np.uint16)
    return pa.Table.from_pandas(pd.DataFrame(cols), preserve_index=False)


def test_flag_anomalies_table_uses_labels_where_present_and_sets_the_quality_bit():
    mean, std, obs, anomaly, _ = _population(n=1000)
    table = _catalog_table(mean, std)
    labelled = np.arange(0, 1000, 2)  # only every other object has a spectrum
    out = flag_anomalies(table, (table["object_id"].to_numpy()[labelled], obs[labelled]), alpha=1e-3)
    assert out.column_names == ["object_id", "ra", "dec", "anomaly_score", "anomaly_pvalue", "ood_score",
                                "flag", "quality_flags"]
    pval = out["anomaly_pvalue"].to_numpy(zero_copy_only=False)
    assert np.isfinite(pval[labelled]).all() and np.isnan(pval[1::2]).all()
    flag = out["flag"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(flag[labelled], pval[labelled] < 1e-3)
    np.testing.assert_array_equal(flag[1::2], out["ood_score"].to_numpy()[1::2] > 5.0)
    assert flag[labelled][anomaly[labelled]].mean() > 0.7 and flag[labelled][~anomaly[labelled]].mean() < 0.01
    qf = out["quality_flags"].to_numpy()
    np.testing.assert_array_equal((qf & QualityFlag.OUT_OF_DISTRIBUTION) > 0, flag)
    assert qf[0] & QualityFlag.NAN_PIXELS  # the catalog's own bits are kept


# -- end to end on a real catalog -------------------------------------------------------------------------


def _labels(tiny_catalog, path, n_latents=P, drop_id=False, id_offset=0, seed=0):
    """A labels table for the catalog's objects: observed = predicted + noise, the first 5 displaced far;
    also a spectra table with truth_anomaly for them. Returns (labels path, spectra path)."""
    t = read_catalog(tiny_catalog).sort_by("object_id")
    rng = np.random.default_rng(seed)
    ids = t["object_id"].to_numpy()
    mean = np.stack([t[f"latent_{i}"].to_numpy() for i in range(1, P + 1)], axis=1)
    obs = mean + rng.normal(0, 0.3, mean.shape)
    obs[:5] += 5.0
    cols = {} if drop_id else {"object_id": ids + id_offset}
    cols.update({f"latent_{i + 1}": obs[:, i % P].astype(np.float32) for i in range(n_latents)})
    pq.write_table(pa.table(cols), path)
    n = len(ids)
    spectra = spectra_to_table(ids, t["ra"].to_numpy(), t["dec"].to_numpy(), np.full(n, 0.1),
                               np.ones((n, N_BINS)), np.ones((n, N_BINS)),
                               extra={"truth_anomaly": np.arange(n) < 5})
    write_spectra_table(path.with_suffix(".spectra.parquet"), spectra)
    return path, path.with_suffix(".spectra.parquet")


def test_cli_anomalies_writes_flags_and_reports_auc(tiny_catalog, tmp_path):
    labels, spectra = _labels(tiny_catalog, tmp_path / "labels.parquet")
    out = tmp_path / "flagged.parquet"
    res = CliRunner().invoke(main, ["anomalies", str(tiny_catalog), "--labels", str(labels), "--out",
                    str(out),
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
    assert flag[np.isin(ids, first5)].all()
    # without labels: only the out-of-distribution score
    res = CliRunner().invoke(main, ["anomalies", str(tiny_catalog), "--out", str(tmp_path / "ood.parquet")])
    assert res.exit_code == 0, res.output
    d2 = pq.read_table(tmp_path / "ood.parquet")["anomaly_score"].to_numpy(zero_copy_only=False)
    assert np.isnan(d2).all()
    # an existing output is kept without --overwrite
    res = CliRunner().invoke(main, ["anomalies", str(tiny_catalog), "--out", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output


@pytest.mark.parametrize("bad, message", [
    ({"drop_id": True}, "no object_id column"),
    ({"id_offset": 10**9}, "is in the catalog"),
    ({"n_latents": 5}, "labels have 5 latents but the catalog has 6"),
])
def test_cli_anomalies_bad_labels_give_one_line_errors(tiny_catalog, tmp_path, bad, message):
    labels, _ = _labels(tiny_catalog, tmp_path / "labels.parquet", **bad)
    res = CliRunner().invoke(main, ["anomalies", str(tiny_catalog), "--labels", str(labels),
                                    "--out", str(tmp_path / "f.parquet")])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galspec: error:") and message in lines[0], res.output
    assert not (tmp_path / "f.parquet").exists()
