"""The ``galspec`` command line: each command is a few lines over a library function."""

from __future__ import annotations

import functools
import sys

import click

from galspec_batch import __version__
from galspec_batch.errors import GalspecError


def one_line_errors(func):
    """Print a project error as one line on stderr and exit 2, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (GalspecError, FileNotFoundError, FileExistsError) as exc:
            click.echo(f"galspec: error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="galspec")
def main() -> None:
    """Predict galaxy spectra from multi-band images, at survey scale."""


@main.group()
def vae() -> None:
    """Train and apply the spectrum VAE (Portillo et al. 2020) whose latents label the CNN."""


@vae.command("train")
@click.option("--spectra", required=True, type=click.Path(), help="Spectra table (Parquet).")
@click.option("--out", required=True, type=click.Path(), help="VAE directory to write.")
@click.option("--latents", default=6, show_default=True, help="Number of latent variables.")
@click.option("--epochs", default=100, show_default=True, help="Most epochs (early stopping may end sooner).")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing VAE directory.")
@one_line_errors
def vae_train(spectra: str, out: str, latents: int, epochs: int, seed: int, overwrite: bool) -> None:
    """Train a VAE on a spectra table."""
    from galspec_batch.spectral_vae import VAESettings, train_vae

    settings = VAESettings(epochs=epochs, seed=seed)
    trained = train_vae(spectra, out, n_latent=latents, settings=settings, overwrite=overwrite, progress=True)
    m = trained.meta
    click.echo(f"wrote {out}: best epoch {m['best_epoch']}/{m['epochs_run']}, "
               f"median validation chi2/dof {m['val_chi2_dof_median']:.3f}")


@vae.command("encode")
@click.option("--vae", "vae_dir", required=True, type=click.Path(), help="VAE directory.")
@click.option("--spectra", required=True, type=click.Path(), help="Spectra table (Parquet).")
@click.option("--out", required=True, type=click.Path(), help="Labels table to write.")
@click.option("--overwrite", is_flag=True)
@one_line_errors
def vae_encode(vae_dir: str, spectra: str, out: str, overwrite: bool) -> None:
    """Write the labels table: object_id, latent_1..latent_N (latent means)."""
    from galspec_batch.spectral_vae import encode_spectra_table

    table = encode_spectra_table(vae_dir, spectra, out, overwrite=overwrite)
    click.echo(f"wrote {out}: {table.num_rows} objects, {table.num_columns - 1} latents")


@vae.command("decode")
@click.option("--vae", "vae_dir", required=True, type=click.Path(), help="VAE directory.")
@click.option("--labels", required=True, type=click.Path(), help="Labels table (Parquet).")
@click.option("--out", required=True, type=click.Path(), help="Spectra (Parquet) to write.")
@click.option("--overwrite", is_flag=True)
@one_line_errors
def vae_decode(vae_dir: str, labels: str, out: str, overwrite: bool) -> None:
    """Decode latents into spectra: object_id, flux[1000]."""
    from galspec_batch.spectral_vae import decode_labels_table

    table = decode_labels_table(vae_dir, labels, out, overwrite=overwrite)
    click.echo(f"wrote {out}: {table.num_rows} spectra")


def _echo_report(report) -> None:
    """Print the quarantined inputs (one line each, on stderr) and the summary."""
    for q in report.quarantined[:20]:
        click.echo(f"galspec: quarantined: {q.reason}", err=True)
    if len(report.quarantined) > 20:
        click.echo(f"galspec: ... and {len(report.quarantined) - 20} more", err=True)
    click.echo(report.summary())


def _image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"expected N or HxW (e.g. 64 or 64x64), got {text!r}")
    h = int(parts[0])
    return (h, int(parts[-1]))


@main.command("ingest")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Cutout store to write.")
@click.option("--catalog", type=click.Path(), help="CSV: object_id, ra, dec, file_g..file_y.")
@click.option("--bands", "cube_bands", help="Plane order of band cubes without band headers, e.g. grizy.")
@click.option("--image-size", help="Centre-crop/pad every cutout to N or HxW pixels.")
@click.option("--pixel-scale", type=float, help="Arcsec per pixel, for files without a WCS.")
@click.option("--survey", default="unknown", show_default=True, help="Survey name stored in the store.")
@click.option("--flux-unit", help="Pixel unit (default: the header BUNIT, else 'unknown').")
@click.option("--zero-point", type=float, help="AB zero point of the pixels, all bands (HSC: 27).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--strict", is_flag=True, help="Stop at the first bad object instead of quarantining it.")
@one_line_errors
def ingest_cmd(inputs, out, catalog, cube_bands, image_size, pixel_scale, survey, flux_unit, zero_point,
               dtype, overwrite, strict) -> None:
    """FITS cutouts (band cubes or one file per band) into a cutout store."""
    from galspec_batch.ingest.cutouts import ingest_cutouts, parse_bands

    report = ingest_cutouts(
        inputs, out, catalog=catalog, cube_bands=parse_bands(cube_bands) if cube_bands else None,
        image_size=_image_size(image_size), pixel_scale=pixel_scale, survey=survey, flux_unit=flux_unit,
        zero_point=zero_point, dtype=dtype, overwrite=overwrite, strict=strict, progress=True,
    )
    _echo_report(report)


@main.command("ingest-spectra")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Spectra table to write.")
@click.option("--id-from", type=click.Choice(["specobjid", "bestobjid", "plate-mjd-fiber"]),
              default="specobjid", show_default=True, help="Where object ids come from.")
@click.option("--allow-zwarning", is_flag=True, help="Keep spectra whose ZWARNING is set.")
@click.option("--min-coverage", type=float, default=0.5, show_default=True,
              help="Least fraction of the rest-frame grid a spectrum must cover.")
@click.option("--overwrite", is_flag=True, help="Replace an existing table.")
@click.option("--strict", is_flag=True, help="Stop at the first bad spectrum instead of quarantining it.")
@one_line_errors
def ingest_spectra_cmd(inputs, out, id_from, allow_zwarning, min_coverage, overwrite, strict) -> None:
    """SDSS spec-*.fits spectra (files or directories) into a rest-frame spectra table."""
    from galspec_batch.ingest.sdss import ingest_spectra

    report = ingest_spectra(
        inputs, out, id_from=id_from, allow_zwarning=allow_zwarning, min_grid_coverage=min_coverage,
        overwrite=overwrite, strict=strict, progress=True,
    )
    _echo_report(report)


@main.command("train")
@click.option("--model", default=None, help="Model name, e.g. xresnet18-hybrid; optional with --init.")
@click.option("--store", required=True, type=click.Path(), help="Cutout store (Zarr).")
@click.option("--labels", required=True, type=click.Path(), help="Labels table: object_id, latent_1..N.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--out", required=True, type=click.Path(), help="Run directory (checkpoints, metrics).")
@click.option("--init", type=click.Path(), help="Fine-tune from this checkpoint.")
@click.option("--lr", type=float, help="Max one-cycle lr [0.03, xresnet18-deconv 0.003, /10 with --init].")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--dropout", default=0.2, show_default=True, help="Head dropout (0 as in the paper).")
@click.option("--val-fraction", default=0.2, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--no-augment", is_flag=True, help="Turn off random D4 flips and rotations.")
@click.option("--threads", type=int, help="Torch CPU threads.")
@click.option("--overwrite", is_flag=True, help="Start again instead of resuming a run in --out.")
@one_line_errors
def train_cmd(model, store, labels, epochs, out, init, lr, batch_size, dropout, val_fraction, seed,
              no_augment, threads, overwrite) -> None:
    """Train (or resume, or fine-tune) a CNN that predicts latents from cutouts."""
    from galspec_batch.training import TrainSettings, fit

    settings = TrainSettings(model=model, epochs=epochs, batch_size=batch_size, max_lr=lr, dropout=dropout,
                             val_fraction=val_fraction, seed=seed, augment=not no_augment)
    result = fit(store, labels, out, settings, init=init, overwrite=overwrite, threads=threads)
    click.echo(f"wrote {result.best}: best val_rmse {result.best_val_rmse:.4f} at epoch {result.best_epoch}; "
               f"last epoch val_rmse {result.metrics[-1]['val_rmse']:.4f}")


@main.command("predict")
@click.option("--store", "store", required=True, type=click.Path(exists=True), help="Cutout store (Zarr).")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="Trained model directory.")
@click.option("--out", required=True, type=click.Path(), help="Output HATS catalog directory.")
@click.option("--mc-samples", default=32, show_default=True, help="MC-dropout samples per galaxy.")
@click.option("--cluster", default="local", show_default=True,
              help="local | cuda | none (in-process) | a Dask scheduler address.")
@click.option("--engine", default="auto", show_default=True,
              help="auto | eager | compile | onnxruntime | tensorrt.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--device", default=None, help="cpu | cuda (default: cuda with --cluster cuda, else cpu).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="CNN precision (default: fp16 on a GPU, fp32 on the CPU).")
@click.option("--workers", "n_workers", type=int, default=None, help="Dask workers (default: 2 CPU, 1/GPU).")
@click.option("--region", default=None, help="cone:RA,DEC,R | box:... | pixels:ORDER:P,... | moc:FILE.")
@click.option("--partitions", default=None, help="Comma-separated partition pixels (store order).")
@click.option("--plan-file", type=click.Path(exists=True), default=None,
              help="SLURM task plan (with --task-index).")
@click.option("--task-index", type=int, default=None, help="Which share of --plan-file to run.")
@click.option("--seed", default=0, show_default=True, help="Run seed of the MC-dropout masks.")
@click.option("--no-finalize", is_flag=True, help="Leave the catalog for `galspec finalize`.")
@click.option("--overwrite", is_flag=True, help="Replace a complete catalog.")
@click.option("--no-calibration", is_flag=True, help="Ignore the checkpoint's calibration.json.")
@one_line_errors
def predict_cmd(store, checkpoint, out, mc_samples, cluster, engine, batch_size, device, precision,
                n_workers, region, partitions, plan_file, task_index, seed, no_finalize, overwrite,
                no_calibration) -> None:
    """Predict latents with MC-dropout uncertainty for every cutout into a HATS catalog."""
    from galspec_batch.predict import predict_catalog
    from galspec_batch.regions import parse_partitions

    pixels = parse_partitions(partitions) if partitions else None
    only = None
    if (plan_file is None) != (task_index is None):
        raise click.UsageError("--plan-file and --task-index go together")
    if plan_file is not None:
        from galspec_batch.slurm import task_partitions

        only = task_partitions(plan_file, task_index)
    s = predict_catalog(store, checkpoint, out, region=region, partitions=pixels, only=only,
                        mc_samples=mc_samples,
                        engine=engine, batch_size=batch_size, device=device, precision=precision,
                        cluster=cluster, n_workers=n_workers,
                        seed=seed, finalize=not no_finalize, overwrite=overwrite,
                        calibrate=not no_calibration)
    click.echo(f"{s.catalog}: {s.objects} galaxies in {s.partitions_done} partitions "
               f"({s.partitions_skipped} already done) in {s.seconds:.1f} s, {s.rate:,.0f} galaxies/s")


@main.command("finalize")
@click.argument("catalog", type=click.Path(exists=True))
@one_line_errors
def finalize_cmd(catalog) -> None:
    """Check every partition of CATALOG and write its HATS metadata."""
    from galspec_batch.predict import finalize_catalog

    doc = finalize_catalog(catalog)
    click.echo(f"{catalog}: complete, {doc['n_objects']} objects in {doc['n_partitions']} partitions")


_SLURM_SITE_OPTIONS = [
    click.option("--site", type=click.Path(), default=None,
                 help="Site settings TOML (default: $GALSPEC_SLURM_SITE; see slurm/site.example.toml)."),
    click.option("--partition", default=None, help="SLURM partition (queue)."),
    click.option("--account", default=None, help="SLURM account."),
    click.option("--qos", default=None, help="SLURM QOS."),
    click.option("--time", "walltime", default=None, help="Walltime per job, e.g. 02:00:00."),
    click.option("--gpus-per-job", type=int, default=None, help="GPUs per job (0: CPU only)."),
    click.option("--cpus-per-task", type=int, default=None, help="CPU cores per job."),
    click.option("--mem", default=None, help="Memory per job, e.g. 16G."),
]


def _site_options(func):
    for option in reversed(_SLURM_SITE_OPTIONS):
        func = option(func)
    return func


@main.command("submit")
@click.option("--store", type=click.Path(exists=True), default=None, help="Cutout store (Zarr).")
@click.option("--checkpoint", type=click.Path(exists=True), default=None, help="Trained model directory.")
@click.option("--out", type=click.Path(), default=None, help="Output HATS catalog directory.")
@click.option("--region", default=None, help="cone:RA,DEC,R | box:... | pixels:ORDER:P,... | moc:FILE.")
@click.option("--partitions", default=None, help="Comma-separated partition pixels (store order).")
@click.option("--jobs", type=int, default=None,
              help="Array tasks / Dask worker jobs (default: one task per partition).")
@click.option("--mode", type=click.Choice(["array", "dask"]), default="array", show_default=True)
@_site_options
@click.option("--mc-samples", default=32, show_default=True, help="MC-dropout samples per galaxy.")
@click.option("--engine", default="auto", show_default=True,
              help="auto | eager | compile | onnxruntime | tensorrt.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Run seed of the MC-dropout masks.")
@click.option("--job-name", default=None, help="SLURM job name (default: galspec / galspec-dask).")
@click.option("--resume", "resume", type=click.Path(exists=True), default=None,
              help="Submit what is left of this half-done catalog.")
@click.option("--dry-run", is_flag=True,
              help="Print the job script and the partition plan; submit nothing.")
@one_line_errors
def submit_cmd(store, checkpoint, out, region, partitions, jobs, mode, site, partition, account, qos,
               walltime, gpus_per_job, cpus_per_task, mem, mc_samples, engine, batch_size, seed, job_name,
               resume, dry_run) -> None:
    """Predict a region of the sky on a SLURM cluster: a job array (default) or a Dask cluster."""
    from galspec_batch import slurm

    overrides = dict(partition=partition, account=account, qos=qos, time=walltime, gpus_per_job=gpus_per_job,
                     cpus_per_task=cpus_per_task, mem=mem)
    if resume is not None:
        settings = slurm.load_site(site) if site else slurm.recorded_site(slurm.read_plan(resume))
        sub = slurm.resume_array(resume, jobs=jobs, site=slurm.replace_site(settings, **overrides),
                                 job_name=job_name or "galspec", dry_run=dry_run)
        if sub is None:
            click.echo(f"{resume}: already complete, nothing to submit")
        else:
            _echo_submission(sub, dry_run)
        return
    given = (("--store", store), ("--checkpoint", checkpoint), ("--out", out))
    missing = [name for name, v in given if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give --resume CATALOG)")
    settings = slurm.replace_site(slurm.load_site(site), **overrides)
    common = dict(region=region, partitions=partitions, site=settings, mc_samples=mc_samples, engine=engine,
                  batch_size=batch_size, seed=seed)
    if mode == "dask":
        if dry_run:
            click.echo(slurm.dask_job_script(settings, job_name or "galspec-dask"))
            sub = slurm.submit_array(store, checkpoint, out, jobs=jobs, dry_run=True, **common)
            click.echo(sub.describe())
            return
        s = slurm.submit_dask(store, checkpoint, out, jobs=jobs or 1, job_name=job_name or "galspec-dask",
                              **common)
        click.echo(f"{s.catalog}: {s.objects} galaxies in {s.partitions_done} partitions "
                   f"({s.partitions_skipped} already done) in {s.seconds:.1f} s")
        return
    sub = slurm.submit_array(store, checkpoint, out, jobs=jobs, job_name=job_name or "galspec",
                             dry_run=dry_run, **common)
    _echo_submission(sub, dry_run)


def _echo_submission(sub, dry_run: bool) -> None:
    if dry_run:
        if sub.array_script is not None:
            click.echo(sub.array_script)
        click.echo(sub.finalize_script)
        click.echo(sub.describe())
        return
    n = sum(sub.counts.values())
    array = f"job array {sub.array_job_id} ({len(sub.tasks)} tasks over {len(sub.counts)} partitions, " \
            f"{n} objects) and " if sub.array_job_id else ""
    click.echo(f"{sub.catalog}: submitted {array}finalize job {sub.finalize_job_id}; "
               f"follow with `galspec status {sub.catalog}`")


@main.command("status")
@click.argument("catalog", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the catalog's counts as JSON.")
@one_line_errors
def status_cmd(catalog, as_json) -> None:
    """Partitions done, running, queued, pending and failed of CATALOG (and its SLURM jobs),
    from the catalog's own state: no store needed."""
    import json

    from rich.console import Console
    from rich.table import Table

    from galspec_batch.slurm import slurm_status

    st = slurm_status(catalog)
    s = st.summary
    if as_json:
        click.echo(json.dumps({**s, "jobs": st.jobs}, indent=1))
        return
    table = Table(title=f"{catalog}: {'complete' if s['complete'] else 'in progress'}")
    table.add_column("partitions")
    table.add_column("count", justify="right")
    table.add_column("objects", justify="right")
    if st.partitions:
        table.add_column("Npix")
        for kind in ("done", "running", "queued", "pending", "failed"):
            pix = st.partitions.get(kind, [])
            shown = ",".join(str(p) for p in pix[:8]) + (",..." if len(pix) > 8 else "")
            table.add_row(kind, str(len(pix)), str(st.objects.get(kind, 0)), shown)
    else:
        table.add_row("done", str(s["done"]), str(s["objects_done"]))
        table.add_row("pending", str(s["pending"] if s["pending"] is not None else "?"), "")
        table.add_row("failed", str(s["failed"]), "")
    Console().print(table)
    for job, state in sorted(st.jobs.items()):
        click.echo(f"job {job}: {state}")
    for pixel, error in st.failures.items():
        click.echo(f"failed {pixel}: {error}")


@main.command("simulate")
@click.option("--out-store", required=True, type=click.Path(), help="Cutout store (Zarr) to write.")
@click.option("--out-spectra", required=True, type=click.Path(), help="Spectra table (Parquet) to write.")
@click.option("-n", "n", default=1000, show_default=True, help="Number of galaxies.")
@click.option("--image-size", default=64, show_default=True, help="Cutout size in pixels (paper: 224).")
@click.option("--pixel-scale", default=0.25, show_default=True, help="Arcsec per pixel.")
@click.option("--seed", default=0, show_default=True)
@click.option("--field", nargs=3, type=float, default=(150.0, 2.2, 1.0), show_default=True,
              help="RA DEC RADIUS (deg) of the sky cap the galaxies lie in.")
@click.option("--anomaly-rate", default=0.01, show_default=True,
              help="Share of spectra that do not fit their image.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--plot", type=click.Path(), default=None, help="Also plot a few galaxies (PNG) to this file.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@one_line_errors
def simulate_cmd(out_store, out_spectra, n, image_size, pixel_scale, seed, field, anomaly_rate, batch_size,
                 dtype, plot, overwrite) -> None:
    """Make a mock survey: grizy cutouts and fiber spectra of the same mock galaxies."""
    from rich.progress import Progress

    from galspec_batch.simulate import simulate_survey

    with Progress(transient=True) as bar:
        task = bar.add_task("simulating", total=n)
        summary = simulate_survey(out_store, out_spectra, n, image_size=image_size, pixel_scale=pixel_scale,
                                  seed=seed, field=tuple(field), anomaly_rate=anomaly_rate,
                                  batch_size=batch_size,
                                  dtype=dtype, overwrite=overwrite, progress=lambda k: bar.advance(task, k))
    click.echo(str(summary))
    if plot:
        from galspec_batch.plots import plot_mock_survey

        plot_mock_survey(out_store, out_spectra, plot)
        click.echo(f"  plot:    {plot}")


@main.command("export")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False),
              help="checkpoint directory (model.safetensors + config.json)")
@click.option("--format", "fmt", required=True, type=click.Choice(["onnx", "tensorrt"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="file to write")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--max-batch", type=int, default=1024, show_default=True, help="largest TensorRT batch")
@click.option("--overwrite", is_flag=True, help="replace --out if it exists")
@one_line_errors
def export_cmd(checkpoint, fmt, out, precision, max_batch, overwrite) -> None:
    """Export a checkpoint's body (preprocessing + CNN, deconvolution folded) as ONNX or a TensorRT
    engine, and check it against eager PyTorch on random images."""
    from galspec_batch.engines import export_checkpoint

    r = export_checkpoint(checkpoint, fmt, out, precision=precision, max_batch=max_batch, overwrite=overwrite)
    click.echo(f"wrote {r.path} ({r.format}, {r.precision})")
    click.echo(f"max abs difference from fp32 eager on random images: {r.max_abs_diff:.3g} "
               f"(features up to {r.max_abs_feature:.3g})")


@main.command("anomalies")
@click.argument("catalog", type=click.Path())
@click.option("--labels", type=click.Path(), default=None,
              help="Labels table (object_id, latent_1..N from `galspec vae encode`) of observed spectra.")
@click.option("--out", required=True, type=click.Path(), help="Flagged table (Parquet) to write.")
@click.option("--truth", type=click.Path(), default=None,
              help="Spectra table with truth_anomaly (mock survey): report the ROC AUC.")
@click.option("--alpha", default=1e-3, show_default=True,
              help="Flag labelled objects with p-value below this.")
@click.option("--ood-threshold", default=5.0, show_default=True,
              help="Flag unlabelled objects with ood_score above this (robust sigma).")
@click.option("--neighbours", "k", default=10, show_default=True, help="k of the k-NN density.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@one_line_errors
def anomalies_cmd(catalog, labels, out, truth, alpha, ood_threshold, k, overwrite) -> None:
    """Flag galaxies whose spectrum disagrees with their image (with --labels), or that lie out of
    the catalog's distribution."""
    from galspec_batch.anomalies import find_anomalies

    r = find_anomalies(catalog, out, labels=labels, truth=truth, alpha=alpha, ood_threshold=ood_threshold,
                       k=k, overwrite=overwrite)
    click.echo(f"wrote {r.out}: {r.n_flagged} of {r.n_objects} objects flagged "
               f"({r.n_labelled} with observed latents)")
    if truth is not None:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        click.echo(f"ROC AUC against truth_anomaly: Mahalanobis {fmt(r.auc_mahalanobis)}, "
                   f"out-of-distribution {fmt(r.auc_ood)}")


@main.command("calibrate")
@click.option("--catalog", required=True, type=click.Path(), help="Catalog predicted by --checkpoint.")
@click.option("--labels", required=True, type=click.Path(), help="Labels table of observed latents.")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint directory to calibrate.")
@click.option("--split-file", type=click.Path(), default=None,
              help="Object ids to fit on, one per line (the rest measure coverage).")
@click.option("--fraction", default=0.5, show_default=True,
              help="Share of objects to fit on, without --split-file.")
@click.option("--method", type=click.Choice(["likelihood", "robust"]), default="robust",
              show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--plot", type=click.Path(), default=None, help="Calibration plot (PNG) to write.")
@click.option("--dry-run", is_flag=True, help="Measure and print, but write no calibration.json.")
@one_line_errors
def calibrate_cmd(catalog, labels, checkpoint, split_file, fraction, method, seed, plot, dry_run) -> None:
    """Fit per-latent scales of the MC uncertainties and save them with the checkpoint."""
    from galspec_batch.calibrate import calibrate_catalog

    r = calibrate_catalog(catalog, labels, checkpoint, fraction=fraction, split_file=split_file, seed=seed,
                          method=method, write=not dry_run, plot=plot)
    click.echo(r.table())
    if r.path is not None:
        click.echo(f"wrote {r.path}")
    if plot:
        click.echo(f"plot: {plot}")


@main.command("select")
@click.argument("catalog", type=click.Path())
@click.option("--where", default=None, help="SQL expression over catalog columns, e.g. 'latent_1 > 0.5'.")
@click.option("--region", default=None, help="cone:RA,DEC,R | box:... | pixels:ORDER:P,... | moc:FILE.")
@click.option("--prob", default=None, help="Condition 'COLUMN OP NUMBER' whose MC probability is computed.")
@click.option("--min-prob", type=float, default=None, help="Keep rows with prob >= this [0.5 with --prob].")
@click.option("--rank", type=click.Choice(["uncertainty"]), default=None,
              help="uncertainty: largest predictive spread first (what to observe to teach the model).")
@click.option("--order-by", default=None, help="COLUMN [ASC|DESC], comma-separated.")
@click.option("--limit", type=int, default=None, help="Keep the first K rows.")
@click.option("--columns", default=None, help="Extra catalog columns to write, comma-separated.")
@click.option("--out", required=True, type=click.Path(), help="targets.parquet | .csv | .fits")
@click.option("--overwrite", is_flag=True, help="Replace --out.")
@one_line_errors
def select_cmd(catalog, where, region, prob, min_prob, rank, order_by, limit, columns, out,
               overwrite) -> None:
    """Select targets from CATALOG: object_id, ra, dec, priority and the selected quantities."""
    from galspec_batch.select import select_targets, write_targets

    extra = [c.strip() for c in columns.split(",") if c.strip()] if columns else []
    table = select_targets(catalog, where=where, region=region, prob=prob, min_prob=min_prob, rank=rank,
                           order_by=order_by, limit=limit, columns=extra)
    meta = {"catalog": str(catalog), "where": where, "region": region, "prob": prob, "min_prob": min_prob,
            "rank": rank, "order_by": order_by, "limit": limit}
    write_targets(table, out, overwrite=overwrite, meta=meta)
    click.echo(f"wrote {out}: {table.num_rows} targets")


@main.command("decode")
@click.argument("catalog", type=click.Path())
@click.option("--vae", "vae_dir", required=True, type=click.Path(), help="VAE directory.")
@click.option("--ids", default=None, help="Comma-separated object ids.")
@click.option("--where", default=None, help="SQL expression over catalog columns (as in `galspec select`).")
@click.option("--region", default=None, help="cone:RA,DEC,R | box:... | pixels:ORDER:P,... | moc:FILE.")
@click.option("--out", required=True, type=click.Path(), help="Decoded spectra (Parquet) to write.")
@click.option("--draws", default=64, show_default=True, help="Latent draws per object.")
@click.option("--seed", default=0, show_default=True)
@click.option("--write-back", is_flag=True, help="Store the derived columns in <catalog>/derived/.")
@click.option("--plot", type=click.Path(), default=None, help="Also plot a few decoded spectra (PNG).")
@click.option("--overwrite", is_flag=True, help="Replace --out (and a sidecar made by another VAE).")
@one_line_errors
def decode_cmd(catalog, vae_dir, ids, where, region, out, draws, seed, write_back, plot, overwrite) -> None:
    """Decode predicted latents into spectra with 16-84% bands, EWs and D4000."""
    from galspec_batch.decode import decode_catalog

    id_list = None
    if ids:
        try:
            id_list = [int(x) for x in ids.split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers, got {ids!r}",
                                     param_hint="--ids") from None
    s = decode_catalog(catalog, vae_dir, out, ids=id_list, where=where, region=region, n_draws=draws,
                       seed=seed, write_back=write_back, overwrite=overwrite, progress=True)
    click.echo(str(s))
    if plot:
        from galspec_batch.plots import plot_decoded_file

        plot_decoded_file(out, plot)
        click.echo(f"  plot: {plot}")


@main.command("demo")
@click.option("--out", default="galspec-demo", show_default=True, type=click.Path(), help="Output directory.")
@click.option("-n", "n_galaxies", default=4000, show_default=True, help="Mock galaxies.")
@click.option("--image-size", default=32, show_default=True, help="Cutout size in pixels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@one_line_errors
def demo_cmd(out, n_galaxies, image_size, seed, overwrite) -> None:
    """The whole chain on a mock survey: simulate, train, predict, select, flag, plot."""
    from galspec_batch.demo import DemoSettings, run_demo

    settings = DemoSettings(n_galaxies=n_galaxies, image_size=image_size, seed=seed)
    click.echo(str(run_demo(out, settings, overwrite=overwrite)))


# -- end of commands --

if __name__ == "__main__":
    main()
