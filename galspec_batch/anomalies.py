"""Anomaly flags for a catalog of predicted latents.

Two scores, both in the flagged table that :func:`find_anomalies` writes:

(a) where observed latents exist (a labels table from ``galspec vae encode``), ``anomaly_score``:
    the squared Mahalanobis distance ``d2`` of the observed latents from the predicted ones, in
    units of each object's calibrated 1-sigma, with the robust centre and covariance of those
    standardised residuals on the calibration objects (a concentration-step minimum covariance
    determinant, Rousseeuw & Van Driessen 1999, then one reweighting step): the latents' errors
    are correlated. ``anomaly_pvalue`` is the chance that a normal galaxy scores at least ``d2``,
    read from the *null distribution* of ``d2`` on the calibration objects (galaxies the network
    did not train on; :class:`NullModel`): their empirical quantiles below the 90th percentile, and
    beyond it the tail of a scaled F distribution, ``d2 / s ~ F(L, nu)``, the law of ``d2`` for
    residuals with a multivariate t shape, with ``s`` and ``nu`` matched to the null's median and
    90th percentile. So a p-value far below 1 / n stays defined, and the few anomalies among the
    calibration objects (a survey has its own), which lie beyond the 90th percentile, do not widen
    the tail (a tail fitted to the largest values, as a generalised Pareto, follows them: tried,
    its shape varied from 0.35 to 2 between samples of one population). Flagged below ``alpha``:
    about a fraction ``alpha`` of normal galaxies are, whatever the shape of the CNN's errors.
    The null model comes with the calibration (``galspec train``, ``galspec calibrate``) and is
    recorded in the catalog's provenance; a catalog predicted without one gets no p-values (an
    error says so).
(b) without observed latents, ``ood_score``: an out-of-distribution score from the predicted means
    and spreads alone. Two log-ratios to the catalog median, each turned into a robust z-score
    (median 0, MAD-scaled 1) and summed over sqrt(2):
    sparsity ``N log(r_k / median r_k)`` (``r_k`` the distance to the k-th neighbour in the
    standardised latent space: minus the log of a k-NN density), and epistemic uncertainty
    ``log(sum std^2 / median)``. Flagged above ``ood_threshold``.

``flag`` uses (a) where an object has observed latents and (b) elsewhere; flagged rows also carry
:attr:`QualityFlag.OUT_OF_DISTRIBUTION` in ``quality_flags``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import optimize, stats
from scipy.spatial import cKDTree

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path
from galspec_batch.catalog.joins import catalog_latents, match_ids
from galspec_batch.columns import (
    ANOMALY_PVALUE,
    ANOMALY_SCORE,
    DEC,
    FLAG,
    OBJECT_ID,
    OOD_SCORE,
    QUALITY_FLAGS,
    RA,
    QualityFlag,
)
from galspec_batch.describe import described_schema
from galspec_batch.errors import FormatError, InputError
from galspec_batch.labels import read_labels
from galspec_batch.metrics import MAD_TO_SIGMA
from galspec_batch.uncertainty import standardized

OUT_COLUMNS = (OBJECT_ID, RA, DEC, ANOMALY_SCORE, ANOMALY_PVALUE, OOD_SCORE, FLAG, QUALITY_FLAGS)


@dataclass(frozen=True)
class AnomalyReport:
    out: Path
    n_objects: int
    n_labelled: int
    n_flagged: int
    auc_mahalanobis: float | None
    auc_ood: float | None
    n_trained: int | None = None  # labelled objects the network trained on (None: its split is unknown)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean truth ``positive``: the Mann-Whitney U over
    n_pos * n_neg, ties counted one half (average ranks). NaN when a class is empty."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mahalanobis2(x: np.ndarray, center: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = x - center
    return np.einsum("ij,ij->i", d, np.linalg.solve(cov, d.T).T)


def robust_covariance(x: np.ndarray, support_fraction: float = 0.75, max_steps: int = 50,
                      quantile: float = 0.975) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust (centre, covariance, inliers) of the rows of ``x`` [N, p].

    Start from the ``support_fraction`` of rows nearest the coordinate-wise median (MAD-scaled),
    iterate concentration steps to a fixed point, rescale so the median d2 matches chi2(p), then
    reweight: the mean and covariance of the rows with d2 below the chi2 ``quantile``, corrected
    for the truncation. Consistent for Gaussian data; breaks down only past 1 - support_fraction.
    """
    x = np.asarray(x, np.float64)
    n, p = x.shape
    h = max(p + 1, int(np.ceil(support_fraction * n)))
    if n < p + 2:
        raise InputError(f"a robust covariance of {p} latents needs at least {p + 2} objects, got {n}")
    med = np.median(x, axis=0)
    mad = MAD_TO_SIGMA * np.median(np.abs(x - med), axis=0)
    mad = np.where(mad > 0, mad, np.std(x, axis=0) + 1e-12)
    d2 = (((x - med) / mad) ** 2).sum(axis=1)
    keep = np.sort(np.argsort(d2, kind="stable")[:h])
    for _ in range(max_steps):
        center, cov = x[keep].mean(axis=0), np.cov(x[keep].T).reshape(p, p)
        cov += 1e-12 * np.trace(cov) / p * np.eye(p)
        d2 = _mahalanobis2(x, center, cov)
        new = np.sort(np.argsort(d2, kind="stable")[:h])
        if np.array_equal(new, keep):
            break
        keep = new
    cov *= np.median(d2) / stats.chi2.ppf(0.5, p)
    d2 = _mahalanobis2(x, center, cov)
    inliers = d2 <= stats.chi2.ppf(quantile, p)
    center = x[inliers].mean(axis=0)
    # A Gaussian truncated at chi2_p quantile q has covariance (F_{p+2}(q) / quantile) * Sigma.
    cov = np.cov(x[inliers].T).reshape(p, p) * quantile / stats.chi2.cdf(stats.chi2.ppf(quantile, p), p + 2)
    return center, cov, inliers


NULL_TAIL = 0.1  # beyond the null's 90th percentile, a scaled F tail (see the module docstring)
NULL_LEVELS = np.linspace(0.0, 1.0 - NULL_TAIL, 181)
F_NU_RANGE = (1.0, 1e4)
MIN_NULL_OBJECTS = 50


@dataclass(frozen=True)
class NullModel:
    """The anomaly score of normal galaxies (see the module docstring): the robust ``center`` and
    ``cov`` of their standardised latent residuals, the quantiles of ``d2`` at ``NULL_LEVELS``
    and the scaled F tail (``d2 / tail_scale ~ F(L, tail_nu)``) beyond the last one."""

    center: np.ndarray
    cov: np.ndarray
    quantiles: np.ndarray
    tail_nu: float
    tail_scale: float
    n: int

    def _f_sf(self, d2: np.ndarray) -> np.ndarray:
        return stats.f.sf(d2 / self.tail_scale, len(self.center), self.tail_nu)

    def scores(self, r: np.ndarray) -> np.ndarray:
        """``d2`` of standardised residuals ``r`` [N, L] (NaN rows give NaN)."""
        return _mahalanobis2(np.asarray(r, np.float64), self.center, self.cov)

    def pvalues(self, d2: np.ndarray) -> np.ndarray:
        """P(a normal galaxy scores >= d2)."""
        d2 = np.asarray(d2, np.float64)
        u = self.quantiles[-1]
        body = 1.0 - np.interp(d2, self.quantiles, NULL_LEVELS)
        tail = NULL_TAIL * self._f_sf(np.maximum(d2, u)) / self._f_sf(u)
        return np.where(np.isnan(d2), np.nan, np.where(d2 > u, tail, body))

    def to_dict(self) -> dict:
        return {"center": self.center.tolist(), "cov": self.cov.tolist(), "levels": NULL_LEVELS.tolist(),
                "quantiles": self.quantiles.tolist(), "tail_fraction": NULL_TAIL, "tail": "scaled F",
                "tail_nu": self.tail_nu, "tail_scale": self.tail_scale, "n": self.n}

    @classmethod
    def from_dict(cls, doc: dict, where: str) -> NullModel:
        try:
            model = cls(np.asarray(doc["center"], np.float64), np.asarray(doc["cov"], np.float64),
                        np.asarray(doc["quantiles"], np.float64), float(doc["tail_nu"]),
                        float(doc["tail_scale"]), int(doc["n"]))
            ok = (np.allclose(doc["levels"], NULL_LEVELS) and model.cov.shape == (len(model.center),) * 2
                  and model.quantiles.shape == NULL_LEVELS.shape and np.all(np.diff(model.quantiles) >= 0)
                  and model.tail_scale > 0 and model.tail_nu > 0 and all(np.isfinite(v).all() for v in
                                                   (model.center, model.cov, model.quantiles)))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise FormatError(f"{where}: the anomaly null model is damaged or of another version")
        return model


def fit_null(r: np.ndarray) -> NullModel:
    """The null model of standardised latent residuals ``r`` [N, L] of normal galaxies."""
    r = np.asarray(r, np.float64)
    r = r[np.isfinite(r).all(axis=1)]
    if len(r) < MIN_NULL_OBJECTS:
        raise InputError(f"an anomaly null distribution needs at least {MIN_NULL_OBJECTS} objects, "
                         f"got {len(r)}")
    center, cov, _ = robust_covariance(r)
    d2 = _mahalanobis2(r, center, cov)
    q = np.maximum.accumulate(np.quantile(d2, NULL_LEVELS))
    nu, scale = _f_tail(q[NULL_LEVELS.searchsorted(0.5)], q[-1], r.shape[1])
    return NullModel(center, cov, q, nu, scale, len(r))


def _f_tail(median: float, q90: float, dof: int) -> tuple[float, float]:
    """(nu, scale) of ``d2 / scale ~ F(dof, nu)`` with this median and 90th percentile."""
    ratio = lambda nu: stats.f.ppf(0.9, dof, nu) / stats.f.ppf(0.5, dof, nu)  # noqa: E731
    lo, hi = F_NU_RANGE
    target = q90 / median
    if target <= ratio(hi):
        nu = hi  # no heavier than chi2
    elif target >= ratio(lo):
        nu = lo
    else:
        nu = float(np.exp(optimize.brentq(lambda x: ratio(np.exp(x)) - target, np.log(lo), np.log(hi))))
    return nu, float(median / stats.f.ppf(0.5, dof, nu))


def _robust_z(x: np.ndarray) -> np.ndarray:
    med = np.median(x)
    mad = MAD_TO_SIGMA * np.median(np.abs(x - med))
    return (x - med) / (mad if mad > 0 else (np.std(x) or 1.0))


def ood_scores(mean: np.ndarray, std: np.ndarray, k: int = D.NEIGHBOURS) -> np.ndarray:
    """Out-of-distribution score of each object from its predicted means and MC spreads alone
    (higher = more unusual; about N(0, 1) for typical objects; see the module docstring). NaN for
    rows without a finite prediction (``BAD_PREDICTION``), which take no part in the others' scores."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    ok = np.isfinite(mean).all(axis=1) & np.isfinite(std).all(axis=1)
    if not ok.all():
        out = np.full(len(mean), np.nan)
        out[ok] = ood_scores(mean[ok], std[ok], k)
        return out
    n, p = mean.shape
    if n < 3:
        raise InputError(f"an out-of-distribution score needs at least 3 objects with finite predictions, "
                         f"got {n}")
    k = min(k, n - 1)
    med = np.median(mean, axis=0)
    mad = MAD_TO_SIGMA * np.median(np.abs(mean - med), axis=0)
    z = (mean - med) / np.where(mad > 0, mad, 1.0)
    dist, _ = cKDTree(z).query(z, k=k + 1)  # the first neighbour is the object itself
    r_k = np.maximum(dist[:, -1], 1e-12)
    sparsity = p * np.log(r_k / np.median(r_k))
    var = np.maximum((std**2).sum(axis=1), 1e-30)
    epistemic = np.log(var / np.median(var))
    return (_robust_z(sparsity) + _robust_z(epistemic)) / np.sqrt(2)


def _observed(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    labels = read_labels(path)
    return labels.object_id, labels.values.astype(np.float64)


def flag_anomalies(catalog: pa.Table, labels: tuple[np.ndarray, np.ndarray] | None = None, *,
                   null: NullModel | None = None, alpha: float = D.ANOMALY_ALPHA,
                   ood_threshold: float = D.OOD_THRESHOLD, k: int = D.NEIGHBOURS) -> pa.Table:
    """The flagged table (``OUT_COLUMNS``) of a catalog table with calibrated spreads and optional
    (object_id, observed latents); p-values need the calibration's ``null`` model."""
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    mean, std = catalog_latents(catalog)
    n, p = mean.shape
    ids = catalog[OBJECT_ID].to_numpy()
    ood = ood_scores(mean, std, k)
    d2 = np.full(n, np.nan)
    pval = np.full(n, np.nan)
    if labels is not None:
        lab_ids, lab_z = labels
        if lab_z.shape[1] != p:
            raise InputError(f"labels have {lab_z.shape[1]} latents but the catalog has {p}")
        if null is None or null.center.shape != (p,):
            raise InputError("anomaly p-values need the calibration's null model for these latents")
        rows = match_ids(ids, lab_ids)
        hit = rows >= 0
        if not hit.any():
            raise InputError(f"none of the {len(lab_ids)} labelled object ids (e.g. {lab_ids[:3].tolist()}) "
                             f"is in the catalog (ids {ids.min()}..{ids.max()})")
        rows = rows[hit]
        d2[rows] = null.scores(standardized(lab_z[hit], mean[rows], std[rows]))
        pval[rows] = null.pvalues(d2[rows])
    labelled = np.isfinite(pval)
    flag = np.where(labelled, pval < alpha, ood > ood_threshold)
    qf = catalog[QUALITY_FLAGS].to_numpy().astype(np.int32) if QUALITY_FLAGS in catalog.column_names \
        else np.zeros(n, np.int32)
    qf = np.where(flag, qf | int(QualityFlag.OUT_OF_DISTRIBUTION), qf).astype(np.int32)
    return pa.table({
        OBJECT_ID: pa.array(ids, pa.int64()),
        RA: pa.array(catalog[RA].to_numpy(), pa.float64()),
        DEC: pa.array(catalog[DEC].to_numpy(), pa.float64()),
        # null, not NaN, where a score is undefined (no labels, no finite prediction): NaN would
        # sort above every number in DuckDB
        ANOMALY_SCORE: pa.array(d2, pa.float64(), mask=~np.isfinite(d2)),
        ANOMALY_PVALUE: pa.array(pval, pa.float64(), mask=~np.isfinite(pval)),
        OOD_SCORE: pa.array(ood, pa.float64(), mask=~np.isfinite(ood)),
        FLAG: pa.array(flag, pa.bool_()),
        QUALITY_FLAGS: pa.array(qf, pa.int32()),
    })


def read_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(object_id, truth_anomaly) of a spectra table."""
    from galspec_batch.spectra_table import read_spectra_table

    try:
        table = read_spectra_table(path, columns=[OBJECT_ID, "truth_anomaly"])
    except FormatError:
        try:
            names = pq.read_schema(path).names
        except Exception:
            names = ["truth_anomaly"]  # not Parquet at all: the FormatError says so
        if "truth_anomaly" in names:
            raise
        raise InputError(f"spectra table {path} has no truth_anomaly column "
                         "(a mock survey's table has)") from None
    return table[OBJECT_ID].to_numpy().astype(np.int64), table["truth_anomaly"].to_numpy().astype(bool)


def truth_auc(flagged: pa.Table, truth: tuple[np.ndarray, np.ndarray]) -> tuple[float | None, float | None]:
    """ROC AUC of anomaly_score (labelled objects) and of ood_score (all), against the truth."""
    t_ids, t_anom = truth
    rows = match_ids(t_ids, flagged[OBJECT_ID].to_numpy())
    known = rows >= 0
    if not known.any():
        raise InputError("no object of the catalog is in the truth table")
    truth_row = np.where(known, t_anom[rows], False)
    d2 = flagged["anomaly_score"].to_numpy(zero_copy_only=False)
    ood = flagged["ood_score"].to_numpy(zero_copy_only=False)
    lab = known & np.isfinite(d2)
    auc_a = roc_auc(d2[lab], truth_row[lab]) if lab.any() else float("nan")
    auc_b = roc_auc(ood[known], truth_row[known])
    return (None if np.isnan(auc_a) else auc_a), (None if np.isnan(auc_b) else auc_b)


def catalog_null_model(catalog: str | Path) -> NullModel | None:
    """The anomaly null model of a catalog's calibration (its provenance), None without one."""
    from galspec_batch.catalog import read_calibration

    null = (read_calibration(catalog) or {}).get("anomaly")
    return None if null is None else NullModel.from_dict(null, f"catalog {catalog}")


def find_anomalies(catalog: str | Path, out: str | Path, *, labels: str | Path | None = None,
                   truth: str | Path | None = None, alpha: float = D.ANOMALY_ALPHA,
                   ood_threshold: float = D.OOD_THRESHOLD, k: int = D.NEIGHBOURS,
                   overwrite: bool = False) -> AnomalyReport:
    """Score and flag every object of ``catalog``; write the flagged Parquet table ``out`` atomically."""
    import json

    from galspec_batch.catalog import read_catalog

    null = catalog_null_model(catalog) if labels is not None else None
    if labels is not None and null is None:
        raise InputError(f"catalog {catalog} was predicted without a calibrated anomaly null model (an "
                         "uncalibrated checkpoint, --no-calibration, or a calibration on too few objects), "
                         "so its p-values would not mean what they say; predict it with a calibrated "
                         "checkpoint")
    table = read_catalog(catalog)
    lab = _observed(labels) if labels is not None else None
    flagged = flag_anomalies(table, lab, null=null, alpha=alpha, ood_threshold=ood_threshold, k=k)
    meta = {"catalog": str(catalog), "labels": None if labels is None else str(labels), "alpha": alpha,
            "ood_threshold": ood_threshold, "neighbours": k,
            "null_model_objects": None if null is None else null.n}
    schema = described_schema(flagged.schema)
    meta = {**schema.metadata, b"galspec-anomalies": json.dumps(meta).encode()}
    flagged = flagged.cast(schema.with_metadata(meta))
    with atomic_path(out, overwrite=overwrite) as tmp:
        pq.write_table(flagged, tmp)
    auc_a = auc_b = None
    if truth is not None:
        auc_a, auc_b = truth_auc(flagged, read_truth(truth))
    n_lab = int(np.isfinite(flagged["anomaly_pvalue"].to_numpy(zero_copy_only=False)).sum())
    n_flag = int(flagged["flag"].to_numpy(zero_copy_only=False).sum())
    return AnomalyReport(Path(out), flagged.num_rows, n_lab, n_flag, auc_a, auc_b,
                         None if lab is None else _n_trained(catalog, lab[0]))


def _n_trained(catalog: str | Path, ids: np.ndarray) -> int | None:
    """How many of ``ids`` the catalog's network trained on, where its checkpoint is still there."""
    from galspec_batch.catalog import read_provenance
    from galspec_batch.checkpoint import read_split

    checkpoint = read_provenance(catalog).get("provenance", {}).get("model", {}).get("checkpoint")
    split = read_split(checkpoint) if checkpoint and Path(checkpoint).is_dir() else None
    return None if split is None else int(np.isin(ids, split[0]).sum())
