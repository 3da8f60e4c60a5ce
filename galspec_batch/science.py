"""What a catalog's numbers are worth, measured on galaxies with spectra that neither the network
nor its calibration saw: the predictive distributions (coverage at 1, 2 and 3 sigma, PIT,
Spearman of |error| with std), the photometric redshift (NMAD, outliers, bias, coverage; against
a colour-only model when given), and the anomaly flags (the false-flag rate of normal galaxies
at each alpha with its Clopper-Pearson interval, with AGN apart, and the ROC AUC against injected
anomalies on a mock survey). Intervals are 68.3% (1-sigma).

Each figure has a target (:data:`TARGETS`), and the report says which it meets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy import stats

from galspec_batch.anomalies import catalog_null_model, flag_anomalies, roc_auc
from galspec_batch.baselines import BaselinePredictions
from galspec_batch.catalog.joins import catalog_targets, match_ids
from galspec_batch.columns import ANOMALY_PVALUE, ANOMALY_SCORE, OBJECT_ID, REDSHIFT
from galspec_batch.errors import InputError
from galspec_batch.metrics import BOOTSTRAP_LEVEL, bootstrap_ci, photoz_metrics
from galspec_batch.uncertainty import NU_MAX, Assessment, assess

ALPHAS = (0.01, 0.001)
TARGETS = {"1-sigma": (0.65, 0.72), "2-sigma": (0.93, 0.975), "spearman": 0.3, "false_flags": 2.0}


@dataclass
class ScienceReport:
    """The measured figures (see the module docstring)."""

    n_objects: int
    n_bad: int  # labelled objects without a finite prediction, left out
    calibrated: Assessment  # the catalog's calibrated distributions
    raw: Assessment  # the network's own spread, as a Gaussian (the catalog's std over the scale)
    photoz: dict[str, dict[str, float]] = field(default_factory=dict)  # "cnn", "colour", "mean" -> figures
    rmse: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # model -> (rmse, low, high)
    anomalies: dict[str, dict[str, float]] = field(default_factory=dict)  # alpha -> figures
    auc: float | None = None

    def checks(self) -> dict[str, bool]:
        """Which of :data:`TARGETS` the report meets."""
        cal, lat = self.calibrated, [i for i, n in enumerate(self.calibrated.names) if n != REDSHIFT]
        lo1, hi1 = TARGETS["1-sigma"]
        lo2, hi2 = TARGETS["2-sigma"]
        out = {
            "1-sigma in [0.65, 0.72] for every latent": bool(np.all((cal.coverage[1][lat] >= lo1)
                                                                    & (cal.coverage[1][lat] <= hi1))),
            "2-sigma in [0.93, 0.975] for every latent": bool(np.all((cal.coverage[2][lat] >= lo2)
                                                                     & (cal.coverage[2][lat] <= hi2))),
            "Spearman >= 0.3 for every latent": bool(np.all(cal.spearman[lat] >= TARGETS["spearman"])),
        }
        for alpha, a in self.anomalies.items():
            out[f"false-flag rate <= 2 alpha at alpha = {alpha}"] = (a["false_flag_rate"]
                                                                     <= TARGETS["false_flags"] * float(alpha))
        if "colour" in self.photoz:
            out["z_phot NMAD better than the colour-only model"] = (self.photoz["cnn"]["nmad"]
                                                                    < self.photoz["colour"]["nmad"])
        return out

    def text(self) -> str:
        """The report as plain text."""
        left = f" ({self.n_bad} more without a finite prediction left out)" if self.n_bad else ""
        lines = [f"{self.n_objects} held-out galaxies with spectra{left}",
                 "predictive distributions, calibrated:", self.calibrated.table(),
                 "the network's own spread, as a Gaussian (before calibration):", self.raw.table()]
        if self.rmse:
            lines.append(f"latent RMSE in units of each latent's std here ({BOOTSTRAP_LEVEL:.0%} bootstrap "
                         "interval): " + "; ".join(f"{m} {v:.3f} [{lo:.3f}, {hi:.3f}]"
                                                  for m, (v, lo, hi) in self.rmse.items()))
        for name, z in self.photoz.items():
            lines.append(f"z_phot ({name}): NMAD {z['nmad']:.4f}, outliers {z['outliers']:.2%}, "
                         f"bias {z['bias']:+.4f}" + (f", 1-sigma coverage {z['coverage_1sigma']:.3f}"
                                                      if "coverage_1sigma" in z else ""))
        for alpha, a in self.anomalies.items():
            lines.append(
                f"anomalies at alpha = {alpha}: {a['n_flagged']:.0f} flagged; false-flag rate of normal "
                f"galaxies {a['false_flag_rate']:.4f} [{a['false_flag_interval'][0]:.4f}, "
                f"{a['false_flag_interval'][1]:.4f}] (non-AGN {a['false_flag_rate_non_agn']:.4f}, "
                f"AGN {a['false_flag_rate_agn']:.4f}); {a['recall']:.0%} of {a['n_injected']:.0f} "
                "injected anomalies found")
        if self.auc is not None:
            lines.append(f"anomaly ROC AUC {self.auc:.3f}")
        lines += [f"  [{'x' if ok else ' '}] {name}" for name, ok in self.checks().items()]
        return "\n".join(lines)

    def record(self) -> dict:
        return {"n_objects": self.n_objects, "n_bad": self.n_bad, "calibrated": self.calibrated.record(),
                "raw": self.raw.record(), "photoz": self.photoz, "rmse": self.rmse,
                "anomalies": self.anomalies, "auc": self.auc, "checks": self.checks()}


def rate_interval(k: int, n: int, level: float = BOOTSTRAP_LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval (central ``level``) of a rate seen ``k`` times in ``n``."""
    ci = stats.binomtest(k, n).proportion_ci(level) if n else None
    return (float(ci.low), float(ci.high)) if ci else (float("nan"), float("nan"))


def photoz_figures(z_pred: np.ndarray, z_true: np.ndarray, z_std: np.ndarray | None = None
                   ) -> dict[str, float]:
    """NMAD, outlier fraction and median bias of (z_pred - z) / (1 + z); 1-sigma coverage with a std."""
    z = photoz_metrics(z_pred, z_true)
    out = {"nmad": z.nmad, "outliers": z.outlier_fraction, "bias": z.bias}
    if z_std is not None:
        out["coverage_1sigma"] = float(np.mean(np.abs(z_pred - z_true) <= z_std))
    return out


@dataclass(frozen=True)
class Joined:
    """A calibrated catalog's predictions for the objects of a labels table, with their observed
    values: ``names`` as a checkpoint has them, arrays [N, T], the calibration's ``scale`` and ``nu``."""

    table: pa.Table  # the catalog rows, in the order of ``ids``
    ids: np.ndarray
    names: list[str]
    observed: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    scale: np.ndarray
    nu: np.ndarray
    n_bad: int = 0  # labelled objects left out: their prediction was not finite (BAD_PREDICTION)


def join_labels(catalog: str | Path, labels: str | Path) -> Joined:
    """The objects of ``labels`` in ``catalog`` (see :class:`Joined`); the catalog must be calibrated."""
    from galspec_batch.catalog import calibration_values, read_calibration, read_catalog
    from galspec_batch.labels import read_labels

    table = read_catalog(catalog)
    names, mean, std = catalog_targets(table)
    cal = read_calibration(catalog)
    if not cal:
        raise InputError(f"catalog {catalog} is uncalibrated; its spreads are the network's own")
    lab = read_labels(labels, n_latent=sum(n != REDSHIFT for n in names))
    _, observed = lab.targets(REDSHIFT in names and lab.z is not None)
    names = names[: observed.shape[1]]
    rows = match_ids(table[OBJECT_ID].to_numpy(), lab.object_id)
    keep = rows >= 0
    predicted = np.isfinite(mean[:, : len(names)]).all(axis=1) & np.isfinite(std[:, : len(names)]).all(axis=1)
    keep[keep] = predicted[rows[keep]]  # rows without a finite prediction (BAD_PREDICTION) are left out
    if keep.sum() < 20:
        raise InputError(f"only {int(keep.sum())} objects of labels {labels} are in catalog {catalog} with "
                         "a finite prediction")
    n_bad = int((rows >= 0).sum() - keep.sum())
    rows = rows[keep]
    return Joined(table.take(rows), lab.object_id[keep], names, observed[keep].astype(np.float64),
                  mean[rows, : len(names)], std[rows, : len(names)],
                  calibration_values(cal, "scale", names), calibration_values(cal, "nu", names), n_bad)


def evaluate_catalog(catalog: str | Path, labels: str | Path, *, truth: str | Path | None = None,
                     baselines: BaselinePredictions | None = None,
                     alphas: tuple[float, ...] = ALPHAS) -> ScienceReport:
    """Measure ``catalog`` against the observed latents and redshifts of ``labels`` (objects the
    network and calibration never saw); ``truth`` is a mock survey's spectra table (injected
    anomalies and AGN), ``baselines`` the colour-only and mean models' predictions to compare."""
    import pyarrow.parquet as pq

    j = join_labels(catalog, labels)
    ids, names, observed, mean, std = j.ids, j.names, j.observed, j.mean, j.std
    report = ScienceReport(len(ids), j.n_bad, assess(names, observed, mean, std, j.nu),
                           assess(names, observed, mean, std / j.scale, np.full(len(names), NU_MAX)))
    n_lat = sum(n != REDSHIFT for n in names)
    preds = {"cnn": mean}
    if baselines is not None:
        at = match_ids(baselines.object_id, ids)
        if (at < 0).any() or baselines.names[: len(names)] != names:
            raise InputError("the baseline predictions miss some labelled objects or targets")
        preds.update({m: v[at][:, : len(names)] for m, v in baselines.values.items()})
    scale = observed[:, :n_lat].std(axis=0)
    for model, pred in preds.items():
        sq = ((pred[:, :n_lat] - observed[:, :n_lat]) / scale) ** 2
        lo, hi = bootstrap_ci(lambda idx, sq=sq: float(np.sqrt(sq[idx].mean())), len(sq), 200)
        report.rmse[model] = (float(np.sqrt(sq.mean())), float(lo), float(hi))
    if REDSHIFT in names:
        i = names.index(REDSHIFT)
        for model, pred in preds.items():
            report.photoz[model] = photoz_figures(pred[:, i], observed[:, i],
                                                  std[:, i] if model == "cnn" else None)
    null = catalog_null_model(catalog)
    anomaly = agn = np.zeros(len(ids), bool)
    if truth is not None:
        t = pq.read_table(truth, columns=[OBJECT_ID, "truth_anomaly", "truth_agn"])
        at = match_ids(t[OBJECT_ID].to_numpy(), ids)
        anomaly = np.where(at >= 0, t["truth_anomaly"].to_numpy()[at], False)
        agn = np.where(at >= 0, t["truth_agn"].to_numpy()[at], False)
    if null is not None:
        flagged = flag_anomalies(j.table, (ids, observed[:, :n_lat]), null=null)
        p = flagged[ANOMALY_PVALUE].to_numpy(zero_copy_only=False)
        normal = ~anomaly
        for alpha in alphas:
            f = p < alpha
            report.anomalies[str(alpha)] = {
                "n_flagged": float(f.sum()), "false_flag_rate": float(f[normal].mean()),
                "false_flag_interval": rate_interval(int(f[normal].sum()), int(normal.sum())),
                "false_flag_rate_non_agn": float(f[normal & ~agn].mean()),
                "false_flag_rate_agn": float(f[normal & agn].mean()) if (normal & agn).any() else np.nan,
                "n_injected": float(anomaly.sum()),
                "recall": float(f[anomaly].mean()) if anomaly.any() else float("nan")}
        if anomaly.any():
            report.auc = roc_auc(flagged[ANOMALY_SCORE].to_numpy(zero_copy_only=False), anomaly)
    return report
