"""Running on a cluster: SLURM job arrays over sky partitions (with a dependent finalize job),
elastic Dask clusters of SLURM jobs (dask-jobqueue), site settings and job scripts, and the
status of a submitted catalog. Each submission is recorded inside the catalog, in ``_slurm/``."""

from galspec_batch.hpc.array import Submission, resume_array, site_settings, submit_array
from galspec_batch.hpc.dask_mode import dask_job_script, describe_dask, submit_dask
from galspec_batch.hpc.plan import SubmissionPlan, read_plan, task_share, was_submitted
from galspec_batch.hpc.site import SiteConfig, load_site
from galspec_batch.hpc.status import status

__all__ = [
    "SiteConfig",
    "Submission",
    "SubmissionPlan",
    "dask_job_script",
    "describe_dask",
    "load_site",
    "read_plan",
    "resume_array",
    "site_settings",
    "status",
    "submit_array",
    "submit_dask",
    "task_share",
    "was_submitted",
]
