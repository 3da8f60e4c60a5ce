"""Dask mode: one elastic Dask cluster of SLURM jobs (dask-jobqueue ``SLURMCluster``), driven from
the submitting host, which runs the same runner as ``galspec predict``."""

from __future__ import annotations

from pathlib import Path

from galspec_batch import defaults as D
from galspec_batch.catalog import paths
from galspec_batch.hpc.site import SiteConfig, check_walltime, load_site
from galspec_batch.options import PredictOptions


def dask_cluster_kwargs(site: SiteConfig, job_name: str, log_dir: Path | None) -> dict:
    """SLURMCluster arguments for ``site``: one single-process worker per SLURM job."""
    extra = [f"--qos={site.qos}"] if site.qos else []
    if site.gpus_per_job:
        extra.append(f"--gres={site.gres_name}:{site.gpus_per_job}")
    extra += [line.strip() for line in site.extra_sbatch]
    kwargs = {
        "cores": site.cpus_per_task,
        "processes": 1,
        "memory": site.mem or f"{4 * site.cpus_per_task}GB",
        "walltime": site.time,
        "queue": site.partition,
        "account": site.account,
        "job_name": job_name,
        "python": site.python,
        "job_extra_directives": extra,
        "job_script_prologue": [f"module load {m}" for m in site.modules]
        + ([site.setup] if site.setup else []),
    }
    if site.dask_interface:
        kwargs["interface"] = site.dask_interface
    if log_dir is not None:
        kwargs["log_directory"] = str(log_dir)
    return kwargs


def dask_job_script(site: SiteConfig, job_name: str = D.DASK_JOB_NAME, log_dir: Path | None = None) -> str:
    """The worker job script dask-jobqueue would submit (scheduler address left symbolic)."""
    from dask_jobqueue.slurm import SLURMJob

    kwargs = dask_cluster_kwargs(site, job_name, log_dir)
    job = SLURMJob(scheduler="tcp://SCHEDULER:8786", name="worker", **kwargs)
    return job.job_script()


def submit_dask(store: str | Path, checkpoint: str | Path, out: str | Path,
                options: PredictOptions | None = None, *, jobs: int = 1, site: SiteConfig | None = None,
                job_name: str = D.DASK_JOB_NAME, progress: bool = True):
    """Predict with an elastic Dask cluster of ``jobs`` SLURM jobs driven from this host; returns
    the runner's summary. The catalog is finalized when every partition is done."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from galspec_batch.predict import predict_catalog
    from galspec_batch.regions import select_partitions
    from galspec_batch.store import open_store

    site = site or load_site()
    options = options or PredictOptions(device=site.device)
    opened = open_store(store)
    counts = {p.pixel: n for p, n in select_partitions(opened, options.region, options.partitions)}
    check_walltime(counts, site, opened.partition_order)
    log_dir = paths.dask_log_dir(out)  # beside the catalog: a worker may start before it exists
    log_dir.mkdir(parents=True, exist_ok=True)
    with SLURMCluster(**dask_cluster_kwargs(site, job_name, log_dir)) as cluster:
        cluster.scale(jobs=jobs)
        with Client(cluster) as client:
            return predict_catalog(store, checkpoint, out, options, cluster=client, progress=progress)


def describe_dask(store: str | Path, checkpoint: str | Path, out: str | Path, options: PredictOptions,
                  site: SiteConfig, job_name: str = D.DASK_JOB_NAME, jobs: int = 1) -> str:
    """What ``--mode dask`` would submit: the worker job script and the partitions, as ``jobs``
    worker jobs would share them (Dask balances them as they finish)."""
    from galspec_batch.hpc.array import describe_plan

    return (dask_job_script(site, job_name) + "\n"
            + describe_plan(store, checkpoint, out, options, site, jobs, unit="Dask worker jobs"))
