"""The whole chain on the embedded default, in a few minutes on a laptop:

1. simulate a mock survey (with spectra, for training) and a second, held-out survey field
   (another seed and sky position, 3% injected anomalies);
2. train the spectrum VAE and encode the observed spectra into latents and redshifts (the labels);
3. train a small CNN on the first survey; it ends calibrated on its validation split;
4. predict the held-out field into a HATS catalog with calibrated uncertainties and z_phot;
5. measure there what a survey team would (:mod:`galspec_batch.science`): coverage at 1, 2 and 3
   sigma, PIT, Spearman(|error|, std), the latents and photo-z against a colour-only model and the
   mean (both fitted on the CNN's training split), the anomaly flags' false-flag rate and ROC AUC;
   decode the spectra, select targets, draw figures.

Every step writes into one directory (default ``galspec-demo/``) with its own config beside it,
so each output can be inspected with the other ``galspec`` commands.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galspec_batch import code_version
from galspec_batch.atomic import refuse_existing, write_json
from galspec_batch.columns import OBJECT_ID
from galspec_batch.options import DEFAULT_MC_SAMPLES, PredictOptions
from galspec_batch.progress import progress_bar


@dataclass(frozen=True)
class DemoSettings:
    n_galaxies: int = 4000
    image_size: int = 32
    seed: int = 0
    vae_epochs: int = 80
    cnn_model: str = "simple-cnn"
    cnn_epochs: int = 20
    mc_samples: int = DEFAULT_MC_SAMPLES
    workers: int = 2
    test_fraction: float = 0.5  # size of the held-out field, relative to n_galaxies
    test_anomaly_rate: float = 0.03  # more than the survey's 1%, for a stable AUC


@dataclass
class DemoSummary:
    out: Path
    settings: DemoSettings
    numbers: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def __str__(self) -> str:
        n = self.numbers
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        lines = [
            f"galspec demo: {self.settings.n_galaxies} mock galaxies at {self.settings.image_size} px, "
            f"in {sum(self.seconds.values()):.0f} s ({steps})",
            f"  VAE: {n['vae_latents']} latents, reconstruction chi2/dof median {n['vae_chi2_median']:.2f} "
            f"on the held-out field's spectra (1 = at the noise level)",
            f"  CNN {self.settings.cnn_model}: validation RMSE {n['val_rmse']:.3f} on z-scored latents "
            f"(predicting the mean: 1.0), per latent {', '.join(f'{v:.2f}' for v in n['val_rmse_latents'])}",
            f"  catalog: {n['catalog_rows']} held-out galaxies with {self.settings.mc_samples} MC-dropout "
            f"samples, {n['predict_rate']:,.0f} galaxies/s end to end ({self.settings.workers} Dask workers, "
            "start-up included)",
            "  on the held-out field (another seed and sky position; the network and its calibration "
            "never saw it):",
            *("    " + line for line in n["science_text"].splitlines()),
            f"  anomaly table: {n['n_flagged']} flagged at alpha = {n['alpha']:g} "
            f"({n['n_anomalies']} injected); image-only OOD score ROC AUC {n['auc_ood']:.3f}",
            f"  targets: {n['n_targets_sf']} star-forming (P(EW Halpha > 20 A) >= 0.9), "
            f"{n['n_targets_uncertain']} most uncertain for the next spectroscopic round",
            f"  figures: {', '.join(n['figures'])}",
            f"  outputs in {self.out}/",
        ]
        return "\n".join(lines)


def run_demo(out: str | Path = "galspec-demo", settings: DemoSettings = DemoSettings(), *,
             overwrite: bool = False, progress: bool = True) -> DemoSummary:
    """Run the whole chain into ``out``; returns the numbers it measured."""
    from galspec_batch import defaults as D
    from galspec_batch.anomalies import find_anomalies
    from galspec_batch.baselines import predict_baselines
    from galspec_batch.checkpoint import read_split
    from galspec_batch.decode import decode_catalog
    from galspec_batch.predict import predict_catalog
    from galspec_batch.science import evaluate_catalog
    from galspec_batch.select import select_targets, write_targets
    from galspec_batch.simulate import simulate_survey
    from galspec_batch.spectra_table import read_spectra_table, spectra_arrays
    from galspec_batch.spectral_vae import (
        VAESettings,
        chi2_per_dof,
        decode,
        encode,
        encode_spectra_table,
        train_vae,
    )
    from galspec_batch.training import TrainSettings, fit

    out = Path(out)
    refuse_existing(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = {"settings": asdict(settings), "code_version": code_version()}
    write_json(out / "demo.json", config)
    summary = DemoSummary(out, settings)
    s = settings
    names = dict(store="survey.zarr", spectra="spectra.parquet", test_store="field2.zarr",
                 test_spectra="field2-spectra.parquet", vae="vae", labels="labels.parquet",
                 test_labels="field2-labels.parquet", cnn="cnn", catalog="catalog",
                 flagged="anomalies.parquet",
                 decoded="decoded.parquet", targets_sf="targets-starforming.fits",
                 targets_uncertain="targets-uncertain.csv", figures="figures")
    paths = {k: out / v for k, v in names.items()}
    n_test = max(200, int(s.n_galaxies * s.test_fraction))

    with _step(summary, "simulate"), progress_bar(s.n_galaxies + n_test, "simulate", "galaxies",
                                                  progress) as advance:
        simulate_survey(paths["store"], paths["spectra"], s.n_galaxies, image_size=s.image_size, seed=s.seed,
                        progress=advance)
        simulate_survey(paths["test_store"], paths["test_spectra"], n_test, image_size=s.image_size,
                        seed=s.seed + 1, field=(153.0, 2.2, 1.0), anomaly_rate=s.test_anomaly_rate,
                        progress=advance)

    with _step(summary, "vae"), _threads(1):  # a small MLP: one thread beats two on a shared machine
        vae_settings = VAESettings(epochs=s.vae_epochs, seed=s.seed)
        vae = train_vae(paths["spectra"], paths["vae"], settings=vae_settings, progress=progress)
        encode_spectra_table(paths["vae"], paths["spectra"], paths["labels"])
        encode_spectra_table(paths["vae"], paths["test_spectra"], paths["test_labels"])
        flux, ivar = spectra_arrays(read_spectra_table(paths["test_spectra"]))
        chi2 = chi2_per_dof(flux, ivar, decode(vae, encode(vae, flux, ivar)))
        summary.numbers.update(vae_latents=vae.n_latent, vae_chi2_median=float(np.median(chi2)))

    with _step(summary, "train"):
        result = fit(paths["store"], paths["labels"], paths["cnn"],
                     TrainSettings(model=s.cnn_model, epochs=s.cnn_epochs, seed=s.seed), progress=progress)
        best = result.metrics[result.best_epoch - 1]
        summary.numbers.update(
            val_rmse=result.best_val_rmse,
            val_rmse_latents=[best[k] for k in sorted(best) if k.startswith("val_rmse_latent_")],
        )

    with _step(summary, "predict"):
        options = PredictOptions(mc_samples=s.mc_samples, seed=s.seed)
        p = predict_catalog(paths["test_store"], result.best, paths["catalog"], options, cluster="local",
                            n_workers=s.workers, progress=progress)
        summary.numbers.update(catalog_rows=p.objects, predict_rate=p.rate)

    with _step(summary, "evaluate"):
        train_ids, _ = read_split(result.best)
        base = predict_baselines(paths["store"], paths["labels"], train_ids, paths["test_store"], seed=s.seed)
        science = evaluate_catalog(paths["catalog"], paths["test_labels"], truth=paths["test_spectra"],
                                   baselines=base)
        summary.numbers.update(science=science.record(), science_text=science.text())
        rep = find_anomalies(paths["catalog"], paths["flagged"], labels=paths["test_labels"],
                             truth=paths["test_spectra"])
        summary.numbers.update(n_anomalies=int(_truth(paths["test_spectra"]).sum()), n_flagged=rep.n_flagged,
                               alpha=D.ANOMALY_ALPHA, auc_ood=rep.auc_ood)
        decode_catalog(paths["catalog"], paths["vae"], paths["decoded"], seed=s.seed, write_back=True)
        sf = select_targets(paths["catalog"], prob="ew_halpha > 20", min_prob=0.9)
        write_targets(sf, paths["targets_sf"])
        unsure = select_targets(paths["catalog"], rank="uncertainty", limit=max(20, n_test // 20))
        write_targets(unsure, paths["targets_uncertain"])
        summary.numbers.update(n_targets_sf=len(sf), n_targets_uncertain=len(unsure))

    with _step(summary, "figures"):
        summary.numbers["figures"] = _figures(paths)

    write_json(out / "summary.json", json.loads(json.dumps(
        {"numbers": summary.numbers, "seconds": summary.seconds}, default=float)))
    return summary


def _truth(spectra: Path) -> np.ndarray:
    return pq.read_table(spectra, columns=["truth_anomaly"])["truth_anomaly"].to_numpy()


def _figures(paths: dict[str, Path]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from galspec_batch import plots
    from galspec_batch.catalog.joins import match_ids
    from galspec_batch.columns import REDSHIFT
    from galspec_batch.decode import read_decoded
    from galspec_batch.science import join_labels
    from galspec_batch.spectra_table import spectra_arrays
    from galspec_batch.spectral_vae import decode, encode, load_vae
    from galspec_batch.store import open_store

    fig_dir = paths["figures"]
    fig_dir.mkdir(exist_ok=True)
    plots.plot_mock_survey(paths["test_store"], paths["test_spectra"], fig_dir / "mock-galaxies.png")
    j = join_labels(paths["catalog"], paths["test_labels"])
    n_lat = sum(n != REDSHIFT for n in j.names)
    plots.plot_latent_corner(paths["catalog"], observed=j.observed[:, :n_lat],
                             path=fig_dir / "latents-corner.png")
    plots.plot_calibration(j.observed, j.mean, j.std / j.scale, scale=j.scale, nu=j.nu, names=j.names,
                           path=fig_dir / "calibration.png")
    plots.plot_sky_map(paths["catalog"], column="latent_1", path=fig_dir / "sky-map.png")
    wave, spec, meta = read_decoded(paths["decoded"])
    spectra = pq.read_table(paths["test_spectra"])
    pick = _figure1_objects(spectra, meta[OBJECT_ID].to_numpy())
    ids = meta[OBJECT_ID].to_numpy()[pick]
    store = open_store(paths["test_store"])
    rows = match_ids(store.object_id, ids)
    images = np.stack([store.read(np.array([r])).images[0] for r in rows])
    at = match_ids(spectra[OBJECT_ID].to_numpy(), ids)
    flux, ivar = spectra_arrays(spectra.take(at))
    titles = [f"object {i}, z = {z:.3f}" for i, z in zip(ids, spectra["truth_z"].to_numpy()[at], strict=True)]
    plots.plot_figure1(images, wave, flux, spec["median"][pick], spec["lo"][pick], spec["hi"][pick],
                       true_ivar=ivar, titles=titles, path=fig_dir / "figure1.png")
    plots.plot_decoded_file(paths["decoded"], fig_dir / "decoded-spectra.png", n=4)
    plots.plot_decoded_file(paths["decoded"], fig_dir / "decoded-spectra-observed.png", n=4,
                            observed_frame=True)
    vae = load_vae(paths["vae"])
    plots.plot_vae_reconstructions(flux, ivar, decode(vae, encode(vae, flux, ivar)), wave, titles=titles,
                                   path=fig_dir / "vae-reconstructions.png")
    return sorted(f"{fig_dir.name}/{p.name}" for p in fig_dir.glob("*.png"))


def _figure1_objects(spectra: pa.Table, decoded_ids: np.ndarray, n: int = 4) -> np.ndarray:
    """Rows of the decoded table for ``n`` galaxies spanning bulge fraction (disk to elliptical)."""
    from galspec_batch.catalog.joins import match_ids

    pos = match_ids(spectra[OBJECT_ID].to_numpy(), decoded_ids)
    bulge = spectra["truth_bulge_frac"].to_numpy()[pos]
    normal = ~spectra["truth_anomaly"].to_numpy()[pos]
    candidates = np.flatnonzero(normal)
    targets = np.linspace(0.05, 0.95, n)
    return np.array([candidates[np.argmin(np.abs(bulge[candidates] - t))] for t in targets])


class _step:
    """Times one step of the demo into the summary."""

    def __init__(self, summary: DemoSummary, name: str):
        self.summary, self.name = summary, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.summary.seconds[self.name] = time.perf_counter() - self.t0


class _threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self.old)
