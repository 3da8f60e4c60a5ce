"""A catalog's status with its SLURM jobs: asks SLURM only when the catalog was submitted there."""

from __future__ import annotations

from pathlib import Path

from galspec_batch.catalog.status import CatalogStatus, catalog_status
from galspec_batch.hpc.commands import queued_jobs
from galspec_batch.hpc.plan import read_plan, was_submitted


def status(catalog: str | Path) -> CatalogStatus:
    """Partitions done, running, queued, pending and failed; running and queued come from
    ``squeue`` for the tasks of the catalog's last submission."""
    st = catalog_status(catalog)
    if not was_submitted(catalog):
        return st
    plan = read_plan(catalog)
    jobs = queued_jobs(plan.job_ids)
    task_state: dict[int, str] = {}
    if plan.submissions:
        last = plan.submissions[-1]
        for job, s in jobs.items():
            head, _, index = job.partition("_")
            if head == last.array_job_id and index.isdigit() and int(index) < len(last.tasks):
                for pixel in last.tasks[int(index)]:
                    task_state[pixel] = "running" if s in ("RUNNING", "COMPLETING") else "queued"
    return st.with_tasks(task_state, jobs)
