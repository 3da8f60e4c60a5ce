"""Honest non-image baselines for the CNN: gradient boosting on aperture photometry (the "colour
model") and the training mean, scored on a validation split the way training scores the CNN.

Every target (each latent and, when the labels have one, the redshift ``z``) gets its own
scikit-learn ``HistGradientBoostingRegressor``, fitted on the training split only (its early
stopping holds out part of the training split, never the validation objects). Missing features
(NaN: a band not observed) are handled by the trees. The models live in memory only: they are
fitted for a comparison and never written to disk (nothing here is pickled or unpickled).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from galspec_batch.catalog.joins import match_rows
from galspec_batch.columns import OBJECT_ID
from galspec_batch.errors import InputError
from galspec_batch.labels import Labels, read_labels, show_ids
from galspec_batch.metrics import BOOTSTRAP_LEVEL, N_BOOT, PhotoZMetrics, bootstrap_ci, photoz_metrics
from galspec_batch.options import DEFAULT_BATCH_SIZE
from galspec_batch.photometry import FLUX_FIBER, FLUX_TOTAL, measure_photometry
from galspec_batch.spectra_table import Z
from galspec_batch.store import CutoutStore, open_store

COLOUR, MEAN = "colour", "mean"
HGB_SETTINGS = dict(max_iter=500, learning_rate=0.05, min_samples_leaf=20, early_stopping=True,
                    validation_fraction=0.1, n_iter_no_change=20)
# OpenMP threads of the trees: on a shared 2-core machine two threads took 5-15x longer than one
# (3000 galaxies, 7 targets: 5 s with one, 20-60 s with two); more pay off on large training sets
FIT_THREADS = 1


def model_features(table: pa.Table) -> list[str]:
    """The columns of a photometry table the colour model uses: all but ``object_id`` and the raw
    fluxes (their asinh magnitudes carry the same order, and trees only see the order)."""
    raw = (FLUX_TOTAL.format(""), FLUX_FIBER.format(""))
    return [c for c in table.column_names if c != OBJECT_ID and not c.startswith(raw)]


def feature_matrix(table: pa.Table, names: list[str] | None = None) -> np.ndarray:
    """Features [N, F] float64 from a photometry table (NaN where missing, infinities too)."""
    names = model_features(table) if names is None else names
    x = np.stack([table[c].to_numpy(zero_copy_only=False) for c in names], axis=1).astype(np.float64)
    return np.where(np.isinf(x), np.nan, x)


def _targets_2d(targets: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(targets, np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != n:
        raise InputError(f"targets have shape {np.shape(targets)}; expected ({n},) or ({n}, T)")
    if not np.isfinite(y).all():
        raise InputError(f"targets hold {int((~np.isfinite(y)).sum())} NaN or infinite values")
    return y


@dataclass(frozen=True)
class ColourModel:
    """One gradient-boosted regressor per target, on photometric features."""

    regressors: tuple[HistGradientBoostingRegressor, ...]
    n_features: int
    threads: int | None = FIT_THREADS

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted targets [N, T] for features [N, F] (NaN allowed)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InputError(f"features have shape {x.shape}; the model was fitted on {self.n_features}")
        with threadpool_limits(self.threads, user_api="openmp"):
            return np.stack([r.predict(x) for r in self.regressors], axis=1)


@dataclass(frozen=True)
class MeanModel:
    """Predicts the training mean of every target, whatever the features."""

    mean: np.ndarray  # [T]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The training means [N, T], N = len(features)."""
        return np.tile(self.mean, (len(features), 1))


def fit_colour_model(features: np.ndarray, targets: np.ndarray, seed: int = 0,
                     threads: int | None = FIT_THREADS) -> ColourModel:
    """Fit one ``HistGradientBoostingRegressor`` per target column of ``targets`` [N] or [N, T] on
    ``features`` [N, F] (NaN for missing values); ``seed`` fixes the early-stopping split,
    ``threads`` the OpenMP threads (None: all cores)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InputError(f"features have shape {x.shape}; expected [N, F] with N >= 2")
    if np.isinf(x).any():
        raise InputError("features hold infinite values; mark missing ones as NaN")
    y = _targets_2d(targets, len(x))
    with threadpool_limits(threads, user_api="openmp"):
        regs = tuple(HistGradientBoostingRegressor(random_state=seed, **HGB_SETTINGS).fit(x, y[:, t])
                     for t in range(y.shape[1]))
    return ColourModel(regs, x.shape[1], threads)


def mean_model(targets: np.ndarray) -> MeanModel:
    """The model that predicts the mean of ``targets`` [N] or [N, T]."""
    y = np.asarray(targets, np.float64)
    return MeanModel(_targets_2d(y, len(y)).mean(axis=0))


def read_targets(path: str | os.PathLike) -> Labels:
    """The targets of a labels table: its latents and, when it has a ``z`` column, the redshift
    as the last target."""
    labels = read_labels(path)
    names, values = labels.targets(labels.z is not None)
    return Labels(labels.object_id, names, values.astype(np.float32))


@dataclass(frozen=True)
class BaselineScore:
    """One model's validation score on one target: RMSE in units of the training split's std,
    its bootstrap interval (resampling validation objects), and for ``z`` the photo-z metrics."""

    target: str
    model: str
    rmse: float
    rmse_low: float
    rmse_high: float
    photoz: PhotoZMetrics | None = None


@dataclass(frozen=True)
class BaselineReport:
    n_train: int
    n_val: int
    scores: tuple[BaselineScore, ...]
    latent_rmse: dict[str, float]  # per model: RMSE over all latents together (training's val_rmse)
    latent_interval: dict[str, tuple[float, float]]  # per model: its bootstrap interval

    def score(self, target: str, model: str) -> BaselineScore:
        return next(s for s in self.scores if s.target == target and s.model == model)

    def table(self) -> pa.Table:
        """One row per (target, model); photo-z columns are NaN for the latents."""
        nan = float("nan")
        rows = [{"target": s.target, "model": s.model, "rmse": s.rmse, "rmse_low": s.rmse_low,
                 "rmse_high": s.rmse_high, "nmad": s.photoz.nmad if s.photoz else nan,
                 "outlier_fraction": s.photoz.outlier_fraction if s.photoz else nan,
                 "bias": s.photoz.bias if s.photoz else nan} for s in self.scores]
        return pa.Table.from_pylist(rows)

    def __str__(self) -> str:
        lines = [f"validation scores of {self.n_val} objects (fitted on {self.n_train}); RMSE in units of "
                 f"the training std, {BOOTSTRAP_LEVEL:.1%} bootstrap intervals:"]
        for target in dict.fromkeys(s.target for s in self.scores):
            parts = []
            for s in (x for x in self.scores if x.target == target):
                part = f"{s.model} {s.rmse:.3f} [{s.rmse_low:.3f}, {s.rmse_high:.3f}]"
                if s.photoz:
                    part += (f" (NMAD {s.photoz.nmad:.4f}, outliers {s.photoz.outlier_fraction:.1%}, "
                             f"bias {s.photoz.bias:+.4f})")
                parts.append(part)
            lines.append(f"  {target}: " + "; ".join(parts))
        lines.append("  all latents: " + "; ".join(f"{m} {v:.3f} [{self.latent_interval[m][0]:.3f}, "
                                                   f"{self.latent_interval[m][1]:.3f}]"
                                                   for m, v in self.latent_rmse.items()))
        return "\n".join(lines)


def compare_baselines(store: CutoutStore | str | os.PathLike, labels: str | os.PathLike,
                      train_ids: np.ndarray, val_ids: np.ndarray, *, seed: int = 0,
                      features: pa.Table | None = None, n_boot: int = N_BOOT,
                      batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = FIT_THREADS
                      ) -> BaselineReport:
    """Fit the colour and mean models on ``train_ids`` and score them on ``val_ids``.

    ``features``: a photometry table already measured (by :func:`measure_photometry`) holding
    every id of the split; by default the photometry of those objects is measured from ``store``.
    """
    store = store if isinstance(store, CutoutStore) else open_store(store)
    targets = read_targets(labels)
    train_ids, val_ids = (np.asarray(a, np.int64).reshape(-1) for a in (train_ids, val_ids))
    if len(train_ids) < 2 or len(val_ids) < 1:
        raise InputError(f"need >= 2 training and >= 1 validation objects, got {len(train_ids)} and "
                         f"{len(val_ids)}")
    overlap = np.intersect1d(train_ids, val_ids)
    if overlap.size:
        raise InputError(f"{overlap.size} objects are in both the training and the validation split: "
                         f"object_id {show_ids(overlap)}")
    ids = np.concatenate([train_ids, val_ids])
    y = targets.values[match_rows(targets.object_id, ids, f"labels table {labels}")].astype(np.float64)
    if features is None:
        rows = match_rows(store.object_id, ids, f"the store {store.path}")
        features = measure_photometry(store, rows, batch_size=batch_size)
    x = feature_matrix(features)[match_rows(features[OBJECT_ID].to_numpy(), ids, "the features table")]
    n = len(train_ids)
    std = y[:n].std(axis=0)  # z-scoring: the mean cancels in a difference
    if not (std > 0).all():
        flat = [t for t, s in zip(targets.names, std, strict=True) if not s > 0]
        raise InputError(f"targets {flat} are constant over the training split of {labels}; cannot z-score")

    preds = {COLOUR: fit_colour_model(x[:n], y[:n], seed, threads).predict(x[n:]),
             MEAN: mean_model(y[:n]).predict(x[n:])}
    sq = np.concatenate([((p - y[n:]) / std) ** 2 for p in preds.values()], axis=1)  # [n_val, models*T]
    n_t = len(targets.names)
    latent = [i for i, t in enumerate(targets.names) if t != Z]
    per_model = [[m * n_t + i for i in latent] for m in range(len(preds))]

    def stats(idx: np.ndarray) -> np.ndarray:  # every target's RMSE, then every model's over the latents
        s = sq[idx]
        return np.concatenate([np.sqrt(s.mean(axis=0)), [np.sqrt(s[:, c].mean()) for c in per_model]])

    rmse = stats(np.arange(len(val_ids)))
    low, high = bootstrap_ci(stats, len(val_ids), n_boot, seed)
    scores, latent_rmse, latent_interval = [], {}, {}
    for m, (model, pred) in enumerate(preds.items()):
        for i, target in enumerate(targets.names):
            k = m * n_t + i
            pz = photoz_metrics(pred[:, i], y[n:, i]) if target == Z else None
            scores.append(BaselineScore(target, model, float(rmse[k]), float(low[k]), float(high[k]), pz))
        k = len(preds) * n_t + m
        latent_rmse[model], latent_interval[model] = float(rmse[k]), (float(low[k]), float(high[k]))
    order = {t: i for i, t in enumerate(targets.names)}
    scores.sort(key=lambda s: order[s.target])
    return BaselineReport(n, len(val_ids), tuple(scores), latent_rmse, latent_interval)


@dataclass(frozen=True)
class BaselinePredictions:
    """The colour and mean models' predictions of ``names`` for the objects ``object_id`` of
    another store: ``values[model]`` [N, T]."""

    object_id: np.ndarray
    names: list[str]
    values: dict[str, np.ndarray]


def predict_baselines(train_store: CutoutStore | str | os.PathLike, labels: str | os.PathLike,
                      train_ids: np.ndarray, store: CutoutStore | str | os.PathLike, *, seed: int = 0,
                      batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = FIT_THREADS
                      ) -> BaselinePredictions:
    """Fit the colour and mean models on the objects ``train_ids`` of ``train_store`` (the CNN's
    training split, for a fair comparison) and predict every object of ``store``."""
    train_store = train_store if isinstance(train_store, CutoutStore) else open_store(train_store)
    store = store if isinstance(store, CutoutStore) else open_store(store)
    targets = read_targets(labels)
    train_ids = np.asarray(train_ids, np.int64).reshape(-1)
    y = targets.values[match_rows(targets.object_id, train_ids, f"labels table {labels}")].astype(np.float64)
    rows = match_rows(train_store.object_id, train_ids, f"the store {train_store.path}")
    fitted = measure_photometry(train_store, rows, batch_size=batch_size)
    names, measured = model_features(fitted), measure_photometry(store, batch_size=batch_size)
    if missing := sorted(set(names) - set(measured.column_names)):
        raise InputError(f"the store {store.path} lacks the features {missing} of the training store "
                         f"{train_store.path} (other bands?)")
    x, test = feature_matrix(fitted, names), feature_matrix(measured, names)
    return BaselinePredictions(store.object_id.copy(), list(targets.names),
                               {COLOUR: fit_colour_model(x, y, seed, threads).predict(test),
                                MEAN: mean_model(y).predict(test)})
