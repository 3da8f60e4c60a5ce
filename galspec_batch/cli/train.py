"""Models: train (resume, fine-tune) a CNN, export it for inference."""

from __future__ import annotations

import click

from galspec_batch import defaults as D
from galspec_batch.cli.common import out_option, overwrite_option, quiet_option


@click.command("train")
@click.option("--model", default=None, help="Model name, e.g. xresnet18-hybrid; optional with --init.")
@click.option("--store", required=True, type=click.Path(), help="Cutout store (Zarr).")
@click.option("--labels", required=True, type=click.Path(),
              help="Labels table: object_id, latent_1..N and optionally z.")
@click.option("--epochs", type=click.IntRange(min=1), default=D.TRAIN_EPOCHS, show_default=True)
@out_option("Run directory (checkpoints, metrics).")
@click.option("--init", type=click.Path(), help="Fine-tune from this checkpoint.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Max one-cycle lr (default: the model's, /10 with --init).")
@click.option("--batch-size", type=click.IntRange(min=2), default=D.TRAIN_BATCH_SIZE, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=D.HEAD_DROPOUT,
              show_default=True, help="Head dropout (0 as in the paper; MC uncertainties need > 0).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=D.VAL_FRACTION, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=D.SEED, show_default=True)
@click.option("--no-augment", is_flag=True, help="Turn off random D4 flips and rotations.")
@click.option("--loss", type=click.Choice(D.LOSSES), default=None,
              help=f"beta-nll: a mean and a variance per target; rmse: means only, the paper's recipe "
                   f"[{D.LOSS}; the checkpoint's with --init].")
@click.option("--beta", type=click.FloatRange(0, 1), default=D.BETA_NLL, show_default=True,
              help="The beta of the beta-NLL (0: the plain Gaussian NLL).")
@click.option("--no-redshift", is_flag=True,
              help="Do not predict the redshift, even where the labels have z.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu | cuda | cuda:N: where the training steps run (a run may resume on another).")
@click.option("--precision", type=click.Choice(D.TRAIN_PRECISIONS), default=D.TRAIN_PRECISION,
              show_default=True,
              help="Arithmetic of the training step: bf16 autocast trains 1.1-2.1x faster on a CPU with "
                   "native bf16 (bench/bench_training.py), with slightly different numbers.")
@click.option("--overwrite", is_flag=True, help="Start again instead of resuming a run in --out.")
@quiet_option
def train_cmd(model, store, labels, epochs, out, init, lr, batch_size, dropout, val_fraction, seed,
              no_augment, loss, beta, no_redshift, threads, device, precision, overwrite, quiet) -> None:
    """Train (or resume, or fine-tune) a CNN that predicts latents (and the redshift) from cutouts,
    and calibrate its uncertainties on the validation split."""
    from galspec_batch.ingest.quarantine import quarantine_path
    from galspec_batch.labels import show_ids
    from galspec_batch.training import TrainSettings, fit

    settings = TrainSettings(model=model, epochs=epochs, batch_size=batch_size, max_lr=lr, dropout=dropout,
                             val_fraction=val_fraction, seed=seed, augment=not no_augment, loss=loss,
                             beta=beta, redshift=False if no_redshift else None, precision=precision)
    result = fit(store, labels, out, settings, init=init, overwrite=overwrite, threads=threads,
                 device=device, progress=not quiet)
    if result.left_out is not None and result.left_out.size:
        click.echo(f"left out {result.left_out.size} labelled objects the store quarantined "
                   f"({quarantine_path(store)}): object_id {show_ids(result.left_out)}")
    best = result.metrics[result.best_epoch - 1]
    z = f", z_phot NMAD {best['val_z_nmad']:.4f}" if "val_z_nmad" in best else ""
    click.echo(f"wrote {result.best}: best val_rmse {result.best_val_rmse:.4f}{z} at epoch "
               f"{result.best_epoch}; last epoch val_rmse {result.metrics[-1]['val_rmse']:.4f}")
    if result.calibration is None:
        click.echo(f"{result.best}: UNCALIBRATED: {result.uncalibrated}")
    else:
        cov = result.calibration.after.coverage
        click.echo(f"calibrated on the validation split: held-out coverage 1-sigma "
                   f"{min(cov[1]):.2f}-{max(cov[1]):.2f}, 2-sigma {min(cov[2]):.2f}-{max(cov[2]):.2f} "
                   f"(expected 0.68, 0.95)")


@click.command("export")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False),
              help="Checkpoint directory (model.safetensors + config.json).")
@click.option("--format", "fmt", required=True, type=click.Choice(D.EXPORT_FORMATS))
@out_option("File to write.")
@click.option("--precision", type=click.Choice(D.EXPORT_PRECISIONS), default=D.EXPORT_PRECISION,
              show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=D.EXPORT_MAX_BATCH, show_default=True,
              help="Largest TensorRT batch.")
@overwrite_option()
def export_cmd(checkpoint, fmt, out, precision, max_batch, overwrite) -> None:
    """Export a checkpoint's body (preprocessing + CNN, deconvolution folded) as ONNX or a TensorRT
    engine, and check it against eager PyTorch on random images."""
    from galspec_batch.engines import export_checkpoint

    r = export_checkpoint(checkpoint, fmt, out, precision=precision, max_batch=max_batch, overwrite=overwrite)
    click.echo(f"wrote {r.path} ({r.format}, {r.precision})")
    click.echo(f"max abs difference from fp32 eager on random images: {r.max_abs_diff:.3g} "
               f"(features up to {r.max_abs_feature:.3g})")


COMMANDS = (train_cmd, export_cmd)
