"""Calibration of the predictive distributions against observed values.

:func:`fit_calibration` fits, on one part of the objects with observed values (labels the network
did not train on), each target's scale and Student-t shape (:mod:`galspec_batch.uncertainty`)
and the anomaly score's null model (:func:`galspec_batch.anomalies.fit_null`), and assesses the
result on the other part: coverage at 1, 2 and 3 sigma, PIT and Spearman(|error|, std), before
and after. ``galspec train`` runs it on its own validation split; :func:`calibrate_catalog`
(``galspec calibrate``) on a catalog joined with new labels, and writes the result into the
checkpoint (:mod:`galspec_batch.checkpoint.calibration`), which every later ``predict`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galspec_batch import defaults as D
from galspec_batch.anomalies import MIN_NULL_OBJECTS, fit_null
from galspec_batch.checkpoint import Calibration
from galspec_batch.columns import REDSHIFT
from galspec_batch.errors import InputError, MissingFileError, UsageError
from galspec_batch.uncertainty import Assessment, assess, fit_t, standardized

MIN_SPLIT = 10  # objects on each side of a calibration's split


@dataclass(frozen=True)
class CalibrationFit:
    """A calibration fitted on some objects and assessed on others."""

    targets: list[str]
    scale: np.ndarray
    nu: np.ndarray
    null: dict | None  # the anomaly null model (NullModel.to_dict), None with too few objects
    before: Assessment  # the held-out objects, the network's own spread as a Gaussian
    after: Assessment  # the same objects, calibrated on the others
    n_fit: int  # the objects the calibration (scale, nu, null) was fitted on
    refit_all: bool = False  # fitted again on every object after the assessment

    def table(self) -> str:
        refit = f"; the calibration kept is fitted again on all {self.n_fit}" if self.refit_all else ""
        return (f"before (the network's own spread, as a Gaussian):\n{self.before.table()}\n"
                f"after (calibrated on the other objects{refit}):\n{self.after.table()}")

    def calibration(self, model_hash: str, mc_samples: int, seed: int, fitted_on: dict) -> Calibration:
        return Calibration(
            model_hash=model_hash, targets=tuple(self.targets), scale=tuple(map(float, self.scale)),
            nu=tuple(map(float, self.nu)), mc_samples=mc_samples, seed=seed,
            fitted_on={**fitted_on, "n_fit": self.n_fit, "n_assessed": self.after.n},
            assessment={"before": self.before.record(), "after": self.after.record()}, anomaly=self.null)


def _fit(targets: list[str], true: np.ndarray, mean: np.ndarray, std: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """(scale, nu, anomaly null model or None) of these objects; the null uses the latents."""
    r = standardized(true, mean, std)
    fits = [fit_t(r[:, i]) for i in range(r.shape[1])]
    scale, nu = np.array([f[0] for f in fits]), np.array([f[1] for f in fits])
    r_cal = (r / scale)[:, [i for i, t in enumerate(targets) if t != REDSHIFT]]
    null = fit_null(r_cal).to_dict() if np.isfinite(r_cal).all(axis=1).sum() >= MIN_NULL_OBJECTS else None
    return scale, nu, null


def fit_calibration(targets: list[str], true: np.ndarray, mean: np.ndarray, std: np.ndarray,
                    fit: np.ndarray, refit_all: bool = False) -> CalibrationFit:
    """Fit on the rows ``fit`` of (true, mean, std) [N, T] and assess on the others; with
    ``refit_all`` the calibration kept is then fitted again on every row (the assessment is that
    of the procedure, on objects its fit did not see)."""
    true, mean, std = (np.asarray(a, np.float64) for a in (true, mean, std))
    scale, nu, null = _fit(targets, true[fit], mean[fit], std[fit])
    test = ~fit
    before = assess(targets, true[test], mean[test], std[test])
    after = assess(targets, true[test], mean[test], std[test] * scale, nu)
    if refit_all:
        scale, nu, null = _fit(targets, true, mean, std)
    n_fit = len(fit) if refit_all else int(fit.sum())
    return CalibrationFit(list(targets), scale, nu, null, before, after, n_fit, refit_all)


def split_objects(ids: np.ndarray, fraction: float = D.CALIBRATION_FRACTION,
                  split_file: str | Path | None = None, seed: int = D.SEED) -> np.ndarray:
    """Boolean mask of the objects to fit on: the ids listed in ``split_file`` (one per line), or
    a random ``fraction`` (fixed by ``seed``); the rest are held out to assess the fit."""
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
    if fit.sum() < MIN_SPLIT or (~fit).sum() < MIN_SPLIT:
        raise InputError(f"the split leaves {int(fit.sum())} objects to fit on and {int((~fit).sum())} "
                         f"to test on; need at least {MIN_SPLIT} of each")
    return fit


@dataclass(frozen=True)
class CalibrationReport:
    fit: CalibrationFit
    n_labelled: int  # labelled objects in the catalog
    n_trained: int  # of them in the network's training split (left out with --exclude-trained)
    n_validation: int  # of them in its validation split (used, and counted here)
    path: Path | None  # the calibration.json written, if any
    held_out: tuple[np.ndarray, np.ndarray, np.ndarray]  # (observed, mean, raw std) of the test objects

    def table(self) -> str:
        note = (f"{self.n_labelled} labelled objects in the catalog; {self.n_trained} from the network's "
                f"training split left out, {self.n_validation} from its validation split used")
        return f"{note}\n{self.fit.table()}"


def calibrate_catalog(catalog: str | Path, labels: str | Path, checkpoint: str | Path, *,
                      fraction: float = D.CALIBRATION_FRACTION, split_file: str | Path | None = None,
                      seed: int = D.SEED, exclude_trained: bool = False, write: bool = True,
                      raw_spreads: bool = False) -> CalibrationReport:
    """Fit the calibration on part of ``catalog`` joined with ``labels``, assess it on the rest and
    (``write``) save it as the checkpoint's ``calibration.json``. A catalog predicted with a
    calibration is first put back on the network's own spread. Objects the network trained on are
    refused (``exclude_trained`` leaves them out): their errors are smaller than a new galaxy's.
    A HATS catalog galspec did not write (e.g. rewritten by lsdb) carries no record of its
    spreads: it is taken only with ``raw_spreads`` (its ``_std`` are the network's own) and a
    ``model_id`` column naming the checkpoint's model."""
    from galspec_batch.atomic import file_sha256
    from galspec_batch.catalog import calibration_values, read_catalog, read_provenance
    from galspec_batch.catalog.joins import catalog_targets, match_ids
    from galspec_batch.catalog.reader import is_galspec
    from galspec_batch.checkpoint import WEIGHTS_FILE, read_split, save_calibration
    from galspec_batch.labels import read_labels, show_ids

    weights = Path(checkpoint) / WEIGHTS_FILE
    if not weights.is_file():
        raise MissingFileError(f"{checkpoint} is not a galspec checkpoint (no {WEIGHTS_FILE})")
    model_hash = file_sha256(weights)
    if is_galspec(catalog):
        doc = read_provenance(catalog)
        prov = doc.get("provenance", doc)
        if prov.get("model", {}).get("hash") != model_hash:
            raise InputError(f"catalog {catalog} was predicted by model {prov.get('model', {}).get('hash')}, "
                             f"not by checkpoint {checkpoint}")
        table = read_catalog(catalog)
    else:
        table, prov = _foreign_catalog(catalog, checkpoint, model_hash, raw_spreads)
    targets, mean, std = catalog_targets(table)
    applied = prov.get("calibration")
    if applied:  # back to the network's own spread
        std = std / calibration_values(applied, "scale", targets)
    lab = read_labels(labels, n_latent=sum(t != REDSHIFT for t in targets))
    if REDSHIFT in targets and lab.z is None:
        raise InputError(f"catalog {catalog} has z_phot but labels {labels} have no z column; a calibration "
                         "covers every predicted quantity (galspec vae encode writes z)")
    _, observed = lab.targets(REDSHIFT in targets)
    rows = match_ids(table["object_id"].to_numpy(), lab.object_id)
    ids, observed, rows = lab.object_id[rows >= 0], observed[rows >= 0].astype(np.float64), rows[rows >= 0]
    split = read_split(checkpoint)
    trained = np.isin(ids, split[0]) if split is not None else np.zeros(len(ids), bool)
    n_val = int(np.isin(ids, split[1]).sum()) if split is not None else 0
    if trained.any() and not exclude_trained:
        raise InputError(f"{int(trained.sum())} of the {len(ids)} labelled objects in catalog {catalog} were "
                         f"in the network's training split (object_id {show_ids(ids[trained])}); their "
                         "errors are smaller than a new galaxy's. Pass --exclude-trained to leave them out")
    keep = ~trained
    ids, observed, rows = ids[keep], observed[keep], rows[keep]
    fit_mask = split_objects(ids, fraction, split_file, seed)
    result = fit_calibration(targets, observed, mean[rows], std[rows], fit_mask)
    path = None
    if write:
        run = prov.get("run", {})
        cal = result.calibration(model_hash, int(run.get("mc_samples", 0)), int(run.get("seed", 0)), {
            "source": "galspec calibrate", "catalog": str(Path(catalog).resolve()),
            "labels": str(Path(labels).resolve()), "labels_sha256": file_sha256(labels),
            "split_file": str(split_file) if split_file else None,
            "fraction": None if split_file else fraction, "seed": seed})
        path = save_calibration(checkpoint, cal)
    test = ~fit_mask
    return CalibrationReport(result, len(trained), int(trained.sum()), n_val, path,
                             (observed[test], mean[rows][test], std[rows][test]))


def _foreign_catalog(catalog, checkpoint, model_hash: str, raw_spreads: bool) -> tuple:
    """The rows of a HATS catalog galspec did not write, and a provenance that says what is known."""
    import pyarrow as pa

    from galspec_batch.catalog import read_catalog
    from galspec_batch.checkpoint import model_id, read_config
    from galspec_batch.columns import MC_SAMPLES, MODEL_ID

    if not raw_spreads:
        raise InputError(f"catalog {catalog} was not written by galspec, so nothing says whether its _std "
                         "columns are calibrated; pass --raw-spreads if they are the network's own "
                         "(predicted with --no-calibration)")
    table = read_catalog(catalog, needed_by="galspec calibrate")
    for name in (MODEL_ID, MC_SAMPLES):
        if name not in table.column_names:
            raise InputError(f"catalog {catalog} has no column {name} (galspec calibrate needs it)")
    want = model_id(read_config(checkpoint), model_hash)
    found = sorted(set(table[MODEL_ID].cast(pa.string()).unique().to_pylist()))
    if found != [want]:
        raise InputError(f"catalog {catalog} has model_id {found}; checkpoint {checkpoint} is {want!r}")
    samples = int(np.median(table[MC_SAMPLES].to_numpy()))
    return table, {"calibration": None, "run": {"mc_samples": samples}}
