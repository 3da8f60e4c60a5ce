"""What the catalog's numbers are worth, on an independent mock field: the issue-11 measurement.

    python bench/bench_science.py --work /tmp/science [--n 8000] [--n-test 10000] [--size 32]
                                  [--model simple-cnn] [--epochs 20] [--threads 2]

One run simulates a training survey (seed 0) and an independent field (seed 1, another sky
position, 3% injected anomalies), trains the spectrum VAE and encodes both surveys' spectra into
labels (latents and z), then trains the CNN twice on the training survey with the same settings
but the loss: the paper's RMSE recipe (a point head; MC dropout is its only spread) and the
default beta-NLL (a Gaussian head: mean and variance). Each model ends calibrated on its own
validation split, as ``galspec train`` does; each predicts the independent field into a catalog.
A colour-only model (gradient boosting on aperture photometry) and the training mean are fitted
on the CNN's training split. Printed for each model (``galspec_batch.science``): 1/2/3-sigma
coverage, PIT KS, Spearman(|error|, std), latent RMSE and z_phot against the baselines, and the
anomaly false-flag rate at alpha = 0.01 and 0.001 with AUC; the raw rows of the RMSE model are the
uncalibrated MC-dropout catalog of before. Re-running resumes: finished steps are kept. The
numbers go to ``<work>/science.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from galspec_batch.atomic import write_json  # noqa: E402
from galspec_batch.baselines import predict_baselines  # noqa: E402
from galspec_batch.checkpoint import read_split  # noqa: E402
from galspec_batch.options import PredictOptions  # noqa: E402
from galspec_batch.predict import predict_catalog  # noqa: E402
from galspec_batch.science import evaluate_catalog  # noqa: E402
from galspec_batch.simulate import simulate_survey  # noqa: E402
from galspec_batch.spectral_vae import VAESettings, encode_spectra_table, train_vae  # noqa: E402
from galspec_batch.training import TrainSettings, fit  # noqa: E402

LOSSES = {"rmse": "the paper's RMSE recipe + MC dropout", "beta-nll": "beta-NLL Gaussian head (default)"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=8000, help="galaxies in the training survey")
    ap.add_argument("--n-test", type=int, default=10000, help="galaxies in the independent field")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--model", default="simple-cnn")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--vae-epochs", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    if not (w / "field.zarr").exists():
        simulate_survey(w / "survey.zarr", w / "spectra.parquet", args.n, image_size=args.size, seed=0)
        simulate_survey(w / "field.zarr", w / "field-spectra.parquet", args.n_test, image_size=args.size,
                        seed=1, field=(153.0, 2.2, 1.5), anomaly_rate=0.03)
    if not (w / "field-labels.parquet").exists():
        train_vae(w / "spectra.parquet", w / "vae", settings=VAESettings(epochs=args.vae_epochs, seed=0),
                  overwrite=True, progress=False)
        encode_spectra_table(w / "vae", w / "spectra.parquet", w / "labels.parquet")
        encode_spectra_table(w / "vae", w / "field-spectra.parquet", w / "field-labels.parquet")
    print(f"data ready ({time.perf_counter() - t0:.0f} s)", flush=True)

    results = {}
    base = None
    for loss, what in LOSSES.items():
        run = w / f"cnn-{loss}"
        settings = TrainSettings(model=args.model, epochs=args.epochs, seed=0, loss=loss)
        result = fit(w / "survey.zarr", w / "labels.parquet", run, settings, threads=args.threads,
                     progress=False)
        catalog = w / f"catalog-{loss}"
        if not (catalog / "_state" / "complete.json").exists():
            predict_catalog(w / "field.zarr", result.best, catalog, PredictOptions(), n_workers=2,
                            overwrite=True, progress=False)
        if base is None:
            base = predict_baselines(w / "survey.zarr", w / "labels.parquet", read_split(result.best)[0],
                                     w / "field.zarr")
        report = evaluate_catalog(catalog, w / "field-labels.parquet", truth=w / "field-spectra.parquet",
                                  baselines=base)
        results[loss] = report.record() | {"val_rmse": result.best_val_rmse}
        print(f"\n=== {what}: {args.model}, {args.epochs} epochs on {args.n} galaxies at {args.size} px; "
              f"validation RMSE {result.best_val_rmse:.3f} ===\n{report.text()}", flush=True)
    write_json(w / "science.json", json.loads(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, default=float)))
    print(f"\n{time.perf_counter() - t0:.0f} s; numbers in {w / 'science.json'}")


if __name__ == "__main__":
    main()
