"""Prediction: a store into a catalog, its status, and finishing it."""

from __future__ import annotations

import click

from galspec_batch import defaults as D
from galspec_batch.cli.common import UNCALIBRATED_NOTE, out_option, predict_options, quiet_option
from galspec_batch.errors import IncompleteOutputError
from galspec_batch.options import CLUSTERS, default_device


@click.command("predict")
@click.option("--store", required=True, type=click.Path(), help="Cutout store (Zarr).")
@click.option("--checkpoint", required=True, type=click.Path(), help="Trained model directory.")
@out_option("Output HATS catalog directory.")
@predict_options
@click.option("--cluster", default=D.CLUSTER, show_default=True,
              help=f"{' | '.join(CLUSTERS)} (in-process) | a Dask scheduler address; auto: in-process "
                   f"below {D.AUTO_CLUSTER_MIN_OBJECTS:,} cutouts or {D.AUTO_CLUSTER_MIN_CORES} cores, "
                   "else local.")
@click.option("--device", default=None, help="cpu | cuda (default: cuda with --cluster cuda, else cpu).")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
              help="Dask workers (default: 2 CPU, 1/GPU).")
@click.option("--tasks-file", type=click.Path(), default=None,
              help="A SLURM submission's tasks.json (with --task-index).")
@click.option("--task-index", type=click.IntRange(min=0), default=None,
              help="Which task of --tasks-file to run.")
@click.option("--no-finalize", is_flag=True, help="Leave the catalog for `galspec finalize`.")
@click.option("--overwrite", is_flag=True, help="Replace a complete catalog.")
@quiet_option
def predict_cmd(store, checkpoint, out, make_options, cluster, device, n_workers, tasks_file, task_index,
                no_finalize, overwrite, quiet) -> None:
    """Predict latents with their uncertainty for every cutout into a HATS catalog."""
    from galspec_batch.predict import predict_catalog

    if (tasks_file is None) != (task_index is None):
        raise click.UsageError("--tasks-file and --task-index go together")
    only = None
    if tasks_file is not None:
        from galspec_batch.hpc import task_share

        only = task_share(tasks_file, task_index)
    options = make_options(device or default_device(cluster))
    s = predict_catalog(store, checkpoint, out, options, only=only, cluster=cluster, n_workers=n_workers,
                        finalize=not no_finalize, overwrite=overwrite, progress=not quiet)
    uncalibrated = "" if s.calibrated else UNCALIBRATED_NOTE
    if s.partitions_done == 0:
        done = "published again" if s.finalized else "nothing to do"
        click.echo(f"{s.catalog}: complete, {s.partitions_skipped} partitions verified; {done}{uncalibrated}")
        return
    repaired = f", {s.repaired} of them repaired" if s.repaired else ""
    where = {"none": "in-process", "local": "local Dask cluster"}.get(s.cluster, s.cluster)
    click.echo(f"{s.catalog}: {s.objects} galaxies in {s.partitions_done} partitions{repaired} "
               f"({s.partitions_skipped} already done) in {s.seconds:.1f} s, {s.rate:,.0f} galaxies/s "
               f"({where}){uncalibrated}")


@click.command("finalize")
@click.argument("catalog", type=click.Path())
def finalize_cmd(catalog) -> None:
    """Check every partition of CATALOG and publish it as a HATS collection (the layout recorded
    in its run state: --partition-rows, --margin-arcsec)."""
    from galspec_batch.predict import finalize_catalog

    doc = finalize_catalog(catalog)
    click.echo(f"{catalog}: complete, {doc['n_objects']} objects from {doc['n_partitions']} store "
               "partitions, published as a HATS collection")


@click.command("status")
@click.argument("catalog", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def status_cmd(catalog, as_json) -> None:
    """Partitions done, pending and failed of CATALOG, from its own state (no store needed); for a
    catalog submitted to SLURM, also running and queued tasks and the jobs in the queue."""
    import json

    from rich.console import Console

    from galspec_batch.hpc import status

    st = status(catalog)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=1))
        return
    table, lines = st.render()
    Console().print(table)
    for line in lines:
        click.echo(line)


@click.command("verify")
@click.argument("catalog", type=click.Path())
def verify_cmd(catalog) -> None:
    """Re-hash every partition of CATALOG against its done marker and report each one that is
    missing, unfinished or damaged; exit 1 unless the catalog is whole. A rerun of `galspec predict`
    with the same settings repairs what this reports."""
    from galspec_batch.catalog import verify_catalog

    problems = verify_catalog(catalog)
    for line in problems:
        click.echo(line)
    if problems:
        n = len(problems)
        raise IncompleteOutputError(f"catalog {catalog}: {n} problem{'s' if n != 1 else ''} (listed above); "
                                    "rerun `galspec predict` with the same settings to repair")
    click.echo(f"{catalog}: whole, every partition matches its done marker")


COMMANDS = (predict_cmd, finalize_cmd, status_cmd, verify_cmd)
