"""The whole chain on the embedded default, in a few minutes on a laptop:

simulate a mock survey -> train the spectrum VAE and encode its latents -> train a small CNN ->
predict every galaxy with MC dropout into a HATS catalog -> print what came out.

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
import torch

from galspec_batch import __version__
from galspec_batch.progress import progress_bar


@dataclass(frozen=True)
class DemoSettings:
    n_galaxies: int = 2000
    image_size: int = 32
    seed: int = 0
    vae_epochs: int = 60
    cnn_model: str = "simple-cnn"
    cnn_epochs: int = 12
    mc_samples: int = 32
    workers: int = 2


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
            f"  VAE: {n['vae_latents']} latents, validation chi2/dof median {n['vae_chi2_median']:.2f} "
            f"(1 = at the noise level)",
            f"  CNN {self.settings.cnn_model}: validation RMSE {n['val_rmse']:.3f} on z-scored latents "
            f"(predicting the mean: 1.0), per latent {', '.join(f'{v:.2f}' for v in n['val_rmse_latents'])}",
            f"  catalog: {n['catalog_rows']} galaxies with {self.settings.mc_samples} MC-dropout samples, "
            f"{n['predict_rate']:,.0f} galaxies/s end to end ({self.settings.workers} Dask workers)",
        ]
        lines += [f"  {k}: {v}" for k, v in n.get("extra", {}).items()]
        lines.append(f"  outputs in {self.out}/")
        return "\n".join(lines)


def run_demo(out: str | Path = "galspec-demo", settings: DemoSettings = DemoSettings(), *,
             overwrite: bool = False, progress: bool = True) -> DemoSummary:
    """Run the whole chain into ``out``; returns the numbers it measured."""
    from galspec_batch.predict import predict_catalog
    from galspec_batch.simulate import simulate_survey
    from galspec_batch.spectra_table import read_spectra_table, spectra_arrays
    from galspec_batch.spectral_vae import TrainSettings as VAESettings
    from galspec_batch.spectral_vae import chi2_per_dof, decode, encode, encode_spectra_table, train_vae
    from galspec_batch.training import TrainSettings, fit

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists (use --overwrite to start again)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = {"settings": asdict(settings), "code_version": __version__}
    (out / "demo.json").write_text(json.dumps(config, indent=1))
    summary = DemoSummary(out, settings)
    paths = {k: out / v for k, v in dict(store="survey.zarr", spectra="spectra.parquet", vae="vae",
                                             labels="labels.parquet", cnn="cnn", catalog="catalog").items()}
    s = settings

    with _step(summary, "simulate"), progress_bar(s.n_galaxies, "simulate", "galaxies", progress) as advance:
        simulate_survey(paths["store"], paths["spectra"], s.n_galaxies, image_size=s.image_size, seed=s.seed,
                        progress=advance)

    with _step(summary, "vae"), _threads(1):  # a small MLP: one thread beats two on a shared machine
        vae_settings = VAESettings(epochs=s.vae_epochs, seed=s.seed)
        vae = train_vae(paths["spectra"], paths["vae"], settings=vae_settings, progress=progress)
        encode_spectra_table(paths["vae"], paths["spectra"], paths["labels"])
        flux, ivar = spectra_arrays(read_spectra_table(paths["spectra"]))
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
        p = predict_catalog(paths["store"], result.best, paths["catalog"], mc_samples=s.mc_samples,
                            cluster="local", n_workers=s.workers, seed=s.seed, progress=progress)
        summary.numbers.update(catalog_rows=p.objects, predict_rate=p.rate)

    (out / "summary.json").write_text(json.dumps(
        {"numbers": summary.numbers, "seconds": summary.seconds}, indent=1, default=float))
    return summary


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
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.old)
