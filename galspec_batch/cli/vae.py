"""The spectrum VAE: train it, encode spectra into labels, decode latents into spectra."""

from __future__ import annotations

import click

from galspec_batch import defaults as D
from galspec_batch.cli.common import out_option, overwrite_option, quiet_option


@click.group("vae")
def vae_group() -> None:
    """Train and apply the spectrum VAE (Portillo et al. 2020) whose latents label the CNN."""


@vae_group.command("train")
@click.option("--spectra", required=True, type=click.Path(), help="Spectra table (Parquet).")
@out_option("VAE directory to write.")
@click.option("--latents", type=click.IntRange(1, 256), default=D.N_LATENTS, show_default=True,
              help="Number of latent variables.")
@click.option("--epochs", type=click.IntRange(min=1), default=D.VAE_EPOCHS, show_default=True,
              help="Most epochs (early stopping may end sooner).")
@click.option("--seed", type=click.IntRange(min=0), default=D.SEED, show_default=True)
@overwrite_option("VAE directory")
@quiet_option
def vae_train(spectra, out, latents, epochs, seed, overwrite, quiet) -> None:
    """Train a VAE on a spectra table."""
    from galspec_batch.spectral_vae import VAESettings, train_vae

    trained = train_vae(spectra, out, n_latent=latents, settings=VAESettings(epochs=epochs, seed=seed),
                        overwrite=overwrite, progress=not quiet)
    m = trained.meta
    click.echo(f"wrote {out}: best epoch {m['best_epoch']}/{m['epochs_run']}, "
               f"median validation chi2/dof {m['val_chi2_dof_median']:.3f}")


@vae_group.command("encode")
@click.option("--vae", "vae_dir", required=True, type=click.Path(), help="VAE directory.")
@click.option("--spectra", required=True, type=click.Path(), help="Spectra table (Parquet).")
@out_option("Labels table to write.")
@overwrite_option()
def vae_encode(vae_dir, spectra, out, overwrite) -> None:
    """Write the labels table: object_id, latent_1..latent_N (latent means) and the redshift z."""
    from galspec_batch.columns import count_latents
    from galspec_batch.spectral_vae import encode_spectra_table

    table = encode_spectra_table(vae_dir, spectra, out, overwrite=overwrite)
    n = count_latents(table.column_names, str(out))
    click.echo(f"wrote {out}: {table.num_rows} objects, {n} latents and the redshift z")


@vae_group.command("decode")
@click.option("--vae", "vae_dir", required=True, type=click.Path(), help="VAE directory.")
@click.option("--labels", required=True, type=click.Path(), help="Labels table (Parquet).")
@out_option("Spectra (Parquet) to write.")
@overwrite_option()
def vae_decode(vae_dir, labels, out, overwrite) -> None:
    """Decode latents into spectra: object_id, flux[1000]."""
    from galspec_batch.spectral_vae import decode_labels_table

    table = decode_labels_table(vae_dir, labels, out, overwrite=overwrite)
    click.echo(f"wrote {out}: {table.num_rows} spectra")


COMMANDS = (vae_group,)
