"""Array mode: one SLURM job array over sky partitions plus a dependent finalize job, recorded in
the catalog so that a later ``--resume`` submits only what is left."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from galspec_batch import defaults as D
from galspec_batch.catalog import paths
from galspec_batch.catalog.lock import catalog_lock
from galspec_batch.catalog.state import check_partition
from galspec_batch.errors import InputError, MissingFileError, SlurmError, UsageError
from galspec_batch.hpc.commands import queued_jobs, sbatch, scancel
from galspec_batch.hpc.plan import SubmissionPlan, SubmissionRecord, TaskList, balance, now, read_plan
from galspec_batch.hpc.scripts import (
    ARRAY_TEMPLATE,
    FINALIZE_TEMPLATE,
    JobSpec,
    render_array_script,
    render_finalize_script,
    script_name,
)
from galspec_batch.hpc.site import SiteConfig, check_walltime, estimate_seconds, format_seconds, load_site
from galspec_batch.options import PredictOptions


@dataclass
class Submission:
    """A job array over sky partitions: the plan, the scripts and (once submitted) the job ids."""

    catalog: Path
    partition_order: int
    counts: dict[int, int]
    tasks: list[list[int]]
    array_script: str | None
    finalize_script: str
    number: int = 0
    array_job_id: str | None = None
    finalize_job_id: str | None = None
    estimate_s: list[float] = field(default_factory=list)

    def describe(self, unit: str = "array tasks") -> str:
        """The partition plan, one line per task."""
        total = sum(self.counts.values())
        lines = [
            f"# plan: {total} objects in {len(self.counts)} partitions (order {self.partition_order}) "
            f"-> {len(self.tasks)} {unit}"
        ]
        for i, pixels in enumerate(self.tasks):
            n = sum(self.counts[p] for p in pixels)
            est = f", ~{format_seconds(self.estimate_s[i])}" if self.estimate_s else ""
            lines.append(f"# task {i}: {n} objects{est}: Npix={','.join(str(p) for p in pixels)}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line saying what was submitted."""
        n = sum(self.counts.values())
        array = (f"job array {self.array_job_id} ({len(self.tasks)} tasks over {len(self.counts)} "
                 f"partitions, {n} objects) and " if self.array_job_id else "")
        return (f"{self.catalog}: submitted {array}finalize job {self.finalize_job_id}; "
                f"follow with `galspec status {self.catalog}`")


def site_settings(site_file: str | Path | None, overrides: dict | None = None,
                  recorded: SiteConfig | None = None) -> SiteConfig:
    """The site file's settings (else the recorded ones, else the defaults) with the command line's."""
    base = load_site(site_file) if site_file or recorded is None else recorded
    return base.with_overrides(**(overrides or {}))


def plan_submission(store: str | Path, checkpoint: str | Path, out: str | Path, options: PredictOptions,
                    site: SiteConfig) -> SubmissionPlan:
    """The partitions of ``store`` that ``options`` select, as a submission plan (nothing written)."""
    from galspec_batch.regions import select_partitions
    from galspec_batch.store import open_store

    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.exists():
        raise MissingFileError(f"checkpoint {checkpoint} does not exist")
    opened = open_store(store)
    counts = {p.pixel: n for p, n in select_partitions(opened, options.region, options.partitions)}
    if options.device.split(":")[0] != site.device:
        raise UsageError(f"the jobs run on {site.device} (--gpus-per-job {site.gpus_per_job}) but the "
                         f"options ask for device {options.device}")
    return SubmissionPlan(str(Path(out).resolve()), str(Path(store).resolve()), str(checkpoint), options,
                          opened.partition_order, counts, site)


def _prepare(plan: SubmissionPlan, pixels: dict[int, int], jobs: int | None, job_name: str) -> Submission:
    """Render the scripts of the next submission of ``plan`` over ``pixels``."""
    catalog = Path(plan.catalog)
    number = len(plan.submissions)
    tasks = balance(pixels, jobs or len(pixels)) if pixels else []
    spec = JobSpec(
        catalog=catalog, store=Path(plan.store), checkpoint=Path(plan.checkpoint), n_tasks=max(len(tasks), 1),
        tasks_file=paths.tasks_file(catalog, number), options=plan.options, job_name=job_name, site=plan.site,
    )
    if pixels:
        check_walltime(pixels, plan.site, plan.partition_order)
    return Submission(
        catalog=catalog,
        partition_order=plan.partition_order,
        counts=dict(pixels),
        tasks=tasks,
        array_script=render_array_script(spec) if tasks else None,
        finalize_script=render_finalize_script(spec),
        number=number,
        estimate_s=[estimate_seconds(sum(pixels[p] for p in t), plan.site) for t in tasks],
    )


def _submit(plan: SubmissionPlan, sub: Submission) -> Submission:
    """Write the submission's files, sbatch the array and the finalize job, record the job ids.

    On any failure the jobs already submitted are cancelled and the submission's files removed.
    """
    folder = paths.submission_dir(sub.catalog, sub.number)
    if folder.exists():
        shutil.rmtree(folder)  # left by a submission that failed before it was recorded
    folder.mkdir(parents=True)
    paths.log_dir(sub.catalog).mkdir(exist_ok=True)
    TaskList(tuple(tuple(t) for t in sub.tasks)).write(paths.tasks_file(sub.catalog, sub.number))
    finalize = folder / script_name(FINALIZE_TEMPLATE)
    finalize.write_text(sub.finalize_script)
    submitted: list[str] = []
    try:
        dependency: tuple[str, ...] = ()
        if sub.array_script is not None:
            script = folder / script_name(ARRAY_TEMPLATE)
            script.write_text(sub.array_script)
            sub.array_job_id = sbatch(script)
            submitted.append(sub.array_job_id)
            dependency = (f"--dependency=afterany:{sub.array_job_id}", "--kill-on-invalid-dep=yes")
        sub.finalize_job_id = sbatch(finalize, *dependency)
        submitted.append(sub.finalize_job_id)
        record = SubmissionRecord(sub.number, now(), tuple(tuple(t) for t in sub.tasks),
                                  sub.array_job_id, sub.finalize_job_id)
        plan.with_submission(record).write(paths.submission_plan_file(sub.catalog))
    except BaseException:
        scancel(submitted)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return sub


def submit_array(store: str | Path, checkpoint: str | Path, out: str | Path,
                 options: PredictOptions | None = None, *, jobs: int | None = None,
                 site: SiteConfig | None = None, job_name: str = D.JOB_NAME,
                 dry_run: bool = False) -> Submission:
    """Predict the partitions of ``store`` that ``options`` select with a SLURM job array.

    ``dry_run`` renders the scripts and the plan and submits nothing, writes nothing.
    """
    from galspec_batch.predict import begin_catalog

    site = site or load_site()
    plan = plan_submission(store, checkpoint, out, options or PredictOptions(device=site.device), site)
    if paths.submission_plan_file(plan.catalog).exists() and not dry_run:
        raise InputError(f"{plan.catalog} was already submitted; use "
                         f"`galspec submit --resume {plan.catalog}`")
    sub = _prepare(plan, plan.partitions, jobs, job_name)  # refuses a walltime too short, writes nothing
    if dry_run:
        return sub
    # the catalog and its full plan are begun before any task runs, so that the array tasks, which
    # run concurrently, only ever join it (without writing its run state); `auto` is resolved here
    with catalog_lock(plan.catalog, command="galspec submit"):
        begun = begin_catalog(plan.store, plan.checkpoint, plan.catalog, plan.options,
                              threads=0 if site.gpus_per_job else site.cpus_per_task,
                              submitted_by="galspec submit")
    if {p.pixel: n for p, n in begun.plan} != plan.partitions:
        raise SlurmError(f"the plan of {plan.catalog} changed while it was submitted; submit again")
    plan = replace(plan, options=begun.options)
    return _submit(plan, _prepare(plan, plan.partitions, jobs, job_name))


def describe_plan(store: str | Path, checkpoint: str | Path, out: str | Path, options: PredictOptions,
                  site: SiteConfig, jobs: int | None = None, unit: str = "array tasks") -> str:
    """The partition plan of a submission, one line per task (nothing written)."""
    plan = plan_submission(store, checkpoint, out, options, site)
    return _prepare(plan, plan.partitions, jobs, D.JOB_NAME).describe(unit)


def pending_partitions(catalog: str | Path, plan: SubmissionPlan) -> dict[int, int]:
    """Planned partitions of ``catalog`` that are not done, with their object counts."""
    return {p: n for p, n in plan.partitions.items()
            if check_partition(catalog, plan.partition_order, p) is not None}


def resume_array(catalog: str | Path, *, jobs: int | None = None, site_file: str | Path | None = None,
                 overrides: dict | None = None, job_name: str = D.JOB_NAME,
                 dry_run: bool = False) -> Submission | None:
    """Submit what is left of a half-done catalog (a new array and finalize job) with the site
    settings it was first submitted with (or ``site_file``'s), plus ``overrides``; None when the
    catalog is already complete."""
    catalog = Path(catalog).resolve()
    plan = read_plan(catalog)
    if paths.complete_file(catalog).exists():
        return None
    active = {j: s for j, s in queued_jobs(plan.job_ids).items() if s != "COMPLETING"}
    if active:
        listed = ", ".join(f"{j} {s}" for j, s in sorted(active.items())[:4])
        raise InputError(
            f"catalog {catalog} still has jobs in the queue ({listed}); wait for them or scancel them first"
        )
    plan = replace(plan, site=site_settings(site_file, overrides, recorded=plan.site))
    sub = _prepare(plan, pending_partitions(catalog, plan), jobs, job_name)
    return sub if dry_run else _submit(plan, sub)
