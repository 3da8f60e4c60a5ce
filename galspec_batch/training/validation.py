"""The validation split at work: each epoch's metrics, and the calibration a finished training
fits on it (so that a checkpoint is calibrated without another step).

Metrics (on targets z-scored with the training split's mean and std): ``val_rmse`` over the
latents (the paper's metric; the redshift, where predicted, is reported apart), ``val_rmse_<t>``
per target, ``val_nll`` (the Gaussian negative log-likelihood per target, for a gaussian head),
and for the redshift the photo-z figures ``val_z_nmad`` and ``val_z_outliers``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from galspec_batch.calibrate import MIN_SPLIT, CalibrationFit, fit_calibration, split_objects
from galspec_batch.checkpoint import load_checkpoint, save_calibration
from galspec_batch.columns import REDSHIFT
from galspec_batch.errors import GalspecError
from galspec_batch.mc import head_parameters, mc_predict
from galspec_batch.metrics import photoz_metrics
from galspec_batch.models import GalspecNet
from galspec_batch.options import DEFAULT_MC_SAMPLES, PredictOptions

from .data import ImageSource, iter_batches

VAL_BATCH = 256


class TrainingDiverged(GalspecError, RuntimeError):
    """The loss, or the network's predictions, stopped being finite numbers."""


def validation_metrics(net: GalspecNet, source: ImageSource, z_val: np.ndarray, names: list[str]
                       ) -> dict[str, float]:
    """One pass over the validation split, dropout off (see the module docstring)."""
    net.eval()
    device = next(net.parameters()).device
    means, variances = [], []
    with torch.no_grad():
        for x, _ in iter_batches(source, z_val, VAL_BATCH):
            mean, var = net.predict(x.to(device))
            means.append(mean.double().cpu())
            if var is not None:
                variances.append(var.double().cpu())
    mean = torch.cat(means)
    var = torch.cat(variances) if variances else None
    ok = torch.isfinite(mean).all(dim=1)
    if var is not None:  # the spread too (softplus + a floor: above 0 where finite)
        ok &= torch.isfinite(var).all(dim=1)
    bad = int((~ok).sum())
    if bad:
        raise TrainingDiverged(f"the network predicts values that are not finite for {bad} of {len(mean)} "
                               "validation objects")
    y = torch.from_numpy(z_val).double()
    se = ((mean - y) ** 2).mean(dim=0)
    latents = [i for i, n in enumerate(names) if n != REDSHIFT]
    record = {"val_rmse": math.sqrt(float(se[latents].mean()))}
    record.update({f"val_rmse_{n}": math.sqrt(float(v)) for n, v in zip(names, se, strict=True)})
    if var is not None:
        record["val_nll"] = float((0.5 * (torch.log(2 * math.pi * var) + (mean - y) ** 2 / var)).mean())
    if REDSHIFT in names:
        i = names.index(REDSHIFT)
        to_z = lambda v: v * float(net.target_std[i]) + float(net.target_mean[i])  # noqa: E731
        z_true, z_pred = to_z(y[:, i].numpy()), to_z(mean[:, i].numpy())
        z = photoz_metrics(z_pred, z_true)
        record.update(val_z_nmad=z.nmad, val_z_outliers=z.outlier_fraction)
    return record


def predict_source(net: GalspecNet, source: ImageSource, ids: np.ndarray, mc_samples: int, seed: int
                   ) -> dict[str, np.ndarray]:
    """MC-dropout predictions of the objects of ``source`` in the targets' units, as ``predict``
    makes them (the same head-only MC, masks and seed): ``mean``, ``std`` and its parts."""
    net.eval()
    weight, bias, p = head_parameters(net.head)
    out: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for a in range(0, len(source), VAL_BATCH):
            pos = np.arange(a, min(a + VAL_BATCH, len(source)))
            features = net.forward_features(torch.from_numpy(source.get(pos)))
            got = mc_predict(features, torch.from_numpy(ids[pos]), weight, bias, p, T=mc_samples, seed=seed,
                             head=net.head_kind)
            for k, v in got.items():
                v = v.double() * net.target_std.double() + (net.target_mean.double() if k == "mean" else 0)
                out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def calibrate_checkpoint(checkpoint: Path, source: ImageSource, ids: np.ndarray, observed: np.ndarray,
                         seed: int, mc_samples: int = DEFAULT_MC_SAMPLES) -> CalibrationFit | None:
    """Fit the calibration of a freshly trained checkpoint on half of its validation split and
    assess it on the other half; then fit it again on the whole split and save that as the
    checkpoint's ``calibration.json``. None (and no calibration) when the split is too small."""
    if len(ids) < 2 * MIN_SPLIT:
        return None
    ckpt = load_checkpoint(checkpoint)
    mc_seed = PredictOptions().seed  # the seed `predict` uses unless told otherwise
    pred = predict_source(ckpt.net, source, ids, mc_samples, mc_seed)
    fit = split_objects(ids, seed=seed)
    result = fit_calibration(ckpt.targets, observed, pred["mean"], pred["std"], fit, refit_all=True)
    fitted_on = {"source": "galspec train: its validation split, all of it (assessed fitting on half, "
                 "testing on the other half)", "n_validation": int(len(ids)), "seed": seed}
    save_calibration(checkpoint, result.calibration(ckpt.model_hash, mc_samples, mc_seed, fitted_on))
    return result
