"""SLURM: submit a region of the sky as a job array or an elastic Dask cluster, or resume one."""

from __future__ import annotations

import click

from galspec_batch import defaults as D
from galspec_batch.cli.common import predict_options, quiet_option

_SITE_OPTIONS = (
    click.option("--site", "site_file", type=click.Path(), default=None,
                 help="Site settings TOML (default: $GALSPEC_SLURM_SITE; see slurm/site.example.toml)."),
    click.option("--partition", default=None, help="SLURM partition (queue)."),
    click.option("--account", default=None, help="SLURM account."),
    click.option("--qos", default=None, help="SLURM QOS."),
    click.option("--time", "walltime", default=None, help="Walltime per job, e.g. 02:00:00."),
    click.option("--gpus-per-job", type=click.IntRange(min=0), default=None,
                 help="GPUs per job (0: CPU only)."),
    click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, help="CPU cores per job."),
    click.option("--mem", default=None, help="Memory per job, e.g. 16G."),
)
_SITE_NAMES = ("partition", "account", "qos", "walltime", "gpus_per_job", "cpus_per_task", "mem")


def _site_options(func):
    for option in reversed(_SITE_OPTIONS):
        func = option(func)
    return func


@click.command("submit")
@click.option("--store", type=click.Path(), default=None, help="Cutout store (Zarr).")
@click.option("--checkpoint", type=click.Path(), default=None, help="Trained model directory.")
@click.option("-o", "--out", type=click.Path(), default=None, help="Output HATS catalog directory.")
@predict_options
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Array tasks / Dask worker jobs (default: one task per partition).")
@click.option("--mode", type=click.Choice(["array", "dask"]), default="array", show_default=True)
@_site_options
@click.option("--job-name", default=None,
              help=f"SLURM job name (default: {D.JOB_NAME} / {D.DASK_JOB_NAME}).")
@click.option("--resume", "resume", type=click.Path(), default=None,
              help="Submit what is left of this half-done catalog (with its first settings).")
@click.option("--dry-run", is_flag=True, help="Print the job script and the partition plan; submit nothing.")
@quiet_option
def submit_cmd(store, checkpoint, out, make_options, jobs, mode, site_file, job_name, resume, dry_run, quiet,
               **site_values) -> None:
    """Predict a region of the sky on a SLURM cluster: a job array (default) or a Dask cluster."""
    from galspec_batch import hpc

    overrides = {("time" if k == "walltime" else k): site_values[k] for k in _SITE_NAMES}
    if resume is not None:
        sub = hpc.resume_array(resume, jobs=jobs, site_file=site_file, overrides=overrides,
                               job_name=job_name or D.JOB_NAME, dry_run=dry_run)
        if sub is None:
            click.echo(f"{resume}: already complete, nothing to submit")
        else:
            _echo_submission(sub, dry_run)
        return
    given = (("--store", store), ("--checkpoint", checkpoint), ("--out", out))
    missing = [name for name, v in given if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give --resume CATALOG)")
    site = hpc.site_settings(site_file, overrides)
    options = make_options(site.device)
    if mode == "dask":
        name = job_name or D.DASK_JOB_NAME
        if dry_run:
            click.echo(hpc.describe_dask(store, checkpoint, out, options, site, name, jobs or 1))
            return
        s = hpc.submit_dask(store, checkpoint, out, options, jobs=jobs or 1, site=site, job_name=name,
                            progress=not quiet)
        click.echo(f"{s.catalog}: {s.objects} galaxies in {s.partitions_done} partitions "
                   f"({s.partitions_skipped} already done) in {s.seconds:.1f} s")
        return
    sub = hpc.submit_array(store, checkpoint, out, options, jobs=jobs, site=site,
                           job_name=job_name or D.JOB_NAME, dry_run=dry_run)
    _echo_submission(sub, dry_run)


def _echo_submission(sub, dry_run: bool) -> None:
    if not dry_run:
        click.echo(sub.summary())
        return
    if sub.array_script is not None:
        click.echo(sub.array_script)
    click.echo(sub.finalize_script)
    click.echo(sub.describe())


COMMANDS = (submit_cmd,)
