"""Calibration of the MC-dropout uncertainties against observed latents.

The MC spread measures only the model's epistemic uncertainty; against the latents of observed
spectra it is usually too small. :func:`fit_scale` fits one factor per latent by maximum Gaussian
likelihood, ``s^2 = mean(((true - mean) / std)^2)`` (``method="likelihood"``), or robustly from the
median absolute z-score, ``s = median(|z|) / 0.6745`` (``method="robust"``, the default:
insensitive to the few objects whose spectrum disagrees with their image, and to the heavy tails
of the CNN's errors, which make the likelihood scale overshoot 68% coverage).
:func:`calibrate_catalog` fits the scales on one part of a catalog joined with its labels, measures
the 1-sigma coverage on the other part before and after, and writes them into the checkpoint
(:mod:`galspec_batch.checkpoint.calibration`); a run that finds them multiplies the catalog's
``latent_i_std`` by ``scale[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import special

from galspec_batch import defaults as D
from galspec_batch.errors import InputError, MissingFileError, UsageError

ONE_SIGMA = float(special.erf(1 / np.sqrt(2)))  # 0.6827


def expected_coverage(k: float | np.ndarray) -> float | np.ndarray:
    """Fraction of a Gaussian within ``k`` sigma of its mean."""
    return special.erf(np.asarray(k, np.float64) / np.sqrt(2))


def _z(true: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    true, mean, std = (np.asarray(a, np.float64) for a in (true, mean, std))
    if not true.shape == mean.shape == std.shape:
        raise InputError(f"true {true.shape}, mean {mean.shape} and std {std.shape} must have one shape")
    if true.ndim == 1:
        true, mean, std = true[:, None], mean[:, None], std[:, None]
    bad = ~(np.isfinite(true) & np.isfinite(mean) & np.isfinite(std) & (std > 0))
    if bad.all(axis=0).any():
        raise InputError("a latent has no object with finite values and std > 0")
    return np.where(bad, np.nan, (true - mean) / np.where(bad, 1.0, std))


def coverage(true: np.ndarray, mean: np.ndarray, std: np.ndarray, k: float = 1.0) -> tuple[np.ndarray, float]:
    """(per-latent fraction of ``|true - mean| <= k * std``, the Gaussian expectation)."""
    z = np.abs(_z(true, mean, std))
    return np.nanmean(np.where(np.isnan(z), np.nan, z <= k), axis=0), float(expected_coverage(k))


def fit_scale(true: np.ndarray, mean: np.ndarray, std: np.ndarray, method: str = D.CALIBRATION_METHOD
              ) -> np.ndarray:
    """Per-latent factor ``s`` such that ``s * std`` is calibrated (see the module docstring)."""
    z = _z(true, mean, std)
    if method == "likelihood":
        return np.sqrt(np.nanmean(z**2, axis=0))
    if method == "robust":
        return np.nanmedian(np.abs(z), axis=0) / np.sqrt(2) / special.erfinv(0.5)
    raise InputError(f"unknown calibration method {method!r}; expected one of {D.CALIBRATION_METHODS}")


@dataclass(frozen=True)
class CalibrationReport:
    latent_names: list[str]
    scale: np.ndarray
    coverage_before: np.ndarray  # on the held-out objects
    coverage_after: np.ndarray
    n_fit: int
    n_test: int
    path: Path | None  # the calibration.json written, if any
    held_out: tuple[np.ndarray, np.ndarray, np.ndarray]  # (observed, mean, std) of the test objects

    def table(self) -> str:
        """The per-latent table, plain text."""
        lines = [f"{'latent':<10} {'scale':>8} {'cov. before':>12} {'cov. after':>11}"
                 f"   (expected {ONE_SIGMA:.3f}; fit on {self.n_fit},"
                 f" measured on {self.n_test} held-out objects)"]
        for name, s, b, a in zip(self.latent_names, self.scale, self.coverage_before, self.coverage_after,
                                 strict=True):
            lines.append(f"{name:<10} {s:8.3f} {b:12.3f} {a:11.3f}")
        return "\n".join(lines)


def split_objects(ids: np.ndarray, fraction: float = D.CALIBRATION_FRACTION,
                  split_file: str | Path | None = None, seed: int = D.SEED) -> np.ndarray:
    """Boolean mask of the objects to fit on: the ids listed in ``split_file`` (one per line), or
    a random ``fraction`` (fixed by ``seed``); the rest are held out to measure coverage."""
    if split_file is not None:
        try:
            listed = np.loadtxt(split_file, dtype=np.int64, ndmin=1, comments="#")
        except (OSError, ValueError) as exc:
            raise InputError(f"--split-file {split_file}: expected one object_id per line ({exc})") from None
        fit = np.isin(ids, listed)
    else:
        if not 0 < fraction < 1:
            raise UsageError(f"--fraction must be in (0, 1), got {fraction}")
        fit = np.zeros(len(ids), bool)
        fit[np.random.default_rng(seed).permutation(len(ids))[: int(round(fraction * len(ids)))]] = True
    if fit.sum() < 2 or (~fit).sum() < 2:
        raise InputError(f"the split leaves {int(fit.sum())} objects to fit on and {int((~fit).sum())} "
                         "to test on; need at least 2 of each")
    return fit


def calibrate_catalog(catalog: str | Path, labels: str | Path, checkpoint: str | Path, *,
                      fraction: float = D.CALIBRATION_FRACTION, split_file: str | Path | None = None,
                      seed: int = D.SEED, method: str = D.CALIBRATION_METHOD,
                      write: bool = True) -> CalibrationReport:
    """Fit per-latent scales on part of ``catalog`` joined with ``labels``, measure coverage on the
    rest before and after, and (``write``) save ``calibration.json`` into ``checkpoint``."""
    from galspec_batch.atomic import file_sha256
    from galspec_batch.catalog import read_catalog, read_provenance
    from galspec_batch.catalog.joins import catalog_latents, match_ids
    from galspec_batch.checkpoint import WEIGHTS_FILE, Calibration, save_calibration
    from galspec_batch.columns import OBJECT_ID, latent_names
    from galspec_batch.labels import read_labels

    doc = read_provenance(catalog)
    prov = doc.get("provenance", doc)  # the run's record sits under "provenance"
    if prov.get("calibration"):
        raise InputError(f"catalog {catalog} already carries calibrated uncertainties; calibrate on a "
                         "catalog predicted with --no-calibration")
    weights = Path(checkpoint) / WEIGHTS_FILE
    if not weights.is_file():
        raise MissingFileError(f"{checkpoint} is not a galspec checkpoint (no {WEIGHTS_FILE})")
    model_hash = file_sha256(weights)
    made_by = prov.get("model", {}).get("hash")
    if made_by != model_hash:
        raise InputError(f"catalog {catalog} was predicted by model {made_by}, not by checkpoint "
                         f"{checkpoint}")
    table = read_catalog(catalog)
    mean, std = catalog_latents(table)
    lab = read_labels(labels)
    lab_ids, lab_z = lab.object_id, lab.values.astype(np.float64)
    if lab_z.shape[1] != mean.shape[1]:
        raise InputError(f"labels {labels} have {lab_z.shape[1]} latents but the catalog has {mean.shape[1]}")
    rows = match_ids(table[OBJECT_ID].to_numpy(), lab_ids)
    if (rows >= 0).sum() < 4:
        raise InputError(f"only {int((rows >= 0).sum())} labelled objects are in catalog {catalog}; "
                         "need 4 or more")
    lab_ids, lab_z, rows = lab_ids[rows >= 0], lab_z[rows >= 0], rows[rows >= 0]
    mean, std = mean[rows], std[rows]
    fit = split_objects(lab_ids, fraction, split_file, seed)
    scale = fit_scale(lab_z[fit], mean[fit], std[fit], method)
    before, _ = coverage(lab_z[~fit], mean[~fit], std[~fit])
    after, _ = coverage(lab_z[~fit], mean[~fit], std[~fit] * scale)
    names = latent_names(mean.shape[1])
    path = None
    if write:
        cal = Calibration(
            model_hash=model_hash, latent_names=tuple(names), scale=tuple(float(s) for s in scale),
            method=method, coverage_1sigma_before=tuple(before.tolist()),
            coverage_1sigma_after=tuple(after.tolist()),
            data={"catalog": str(Path(catalog).resolve()), "labels": str(Path(labels).resolve()),
                  "split_file": str(split_file) if split_file else None,
                  "fraction": None if split_file else fraction, "seed": seed,
                  "n_fit": int(fit.sum()), "n_test": int((~fit).sum())},
        )
        path = save_calibration(checkpoint, cal)
    held_out = (lab_z[~fit], mean[~fit], std[~fit])
    return CalibrationReport(names, scale, before, after, int(fit.sum()), int((~fit).sum()), path, held_out)
