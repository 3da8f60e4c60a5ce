"""A catalog's SLURM record: ``_slurm/plan.json`` (:class:`SubmissionPlan`: the partitions with
their object counts, the run's options and site settings, every submission with its job ids) and,
per submission, ``_slurm/submit-K/tasks.json`` (:class:`TaskList`: the partitions of each array
task, which ``galspec predict --tasks-file F --task-index I`` runs)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from galspec_batch.catalog import paths
from galspec_batch.errors import MissingFileError, UsageError
from galspec_batch.formats import VersionedFormat, check_int, require
from galspec_batch.hpc.site import SiteConfig
from galspec_batch.options import PredictOptions


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SubmissionRecord:
    """One ``sbatch`` of an array (or none, when nothing was left) and its finalize job."""

    number: int
    submitted: str
    tasks: tuple[tuple[int, ...], ...]
    array_job_id: str | None
    finalize_job_id: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(tuple(int(p) for p in t) for t in self.tasks))

    @property
    def job_ids(self) -> list[str]:
        return [j for j in (self.array_job_id, self.finalize_job_id) if j]


@dataclass(frozen=True)
class SubmissionPlan(VersionedFormat):
    """What was submitted for a catalog, and how; ``galspec submit --resume`` and ``galspec
    status`` read it back."""

    FORMAT: ClassVar[str] = "galspec-slurm-plan"
    VERSION: ClassVar[int] = 2
    MAX_BYTES: ClassVar[int] = 64 << 20

    catalog: str
    store: str
    checkpoint: str
    options: PredictOptions
    partition_order: int
    partitions: dict[int, int]  # pixel -> objects in the selection
    site: SiteConfig
    submissions: tuple[SubmissionRecord, ...] = ()

    def validate(self) -> None:
        check_int("partition_order", self.partition_order, 0, 29)
        require(all(isinstance(r, SubmissionRecord) for r in self.submissions), "bad submissions")

    @classmethod
    def _decode(cls, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        body["options"] = PredictOptions.from_dict(body["options"])
        body["partitions"] = {int(p): int(n) for p, n in body["partitions"].items()}
        body["site"] = SiteConfig.from_dict(body["site"], source="the submission record")
        body["submissions"] = tuple(SubmissionRecord(**r) for r in body.get("submissions", ()))
        return body

    def with_submission(self, record: SubmissionRecord) -> SubmissionPlan:
        return replace(self, submissions=(*self.submissions, record))

    @property
    def job_ids(self) -> list[str]:
        return [j for s in self.submissions for j in s.job_ids]


@dataclass(frozen=True)
class TaskList(VersionedFormat):
    """The partitions of each task of one array submission."""

    FORMAT: ClassVar[str] = "galspec-slurm-tasks"
    VERSION: ClassVar[int] = 1
    MAX_BYTES: ClassVar[int] = 64 << 20

    tasks: tuple[tuple[int, ...], ...]

    def validate(self) -> None:
        object.__setattr__(self, "tasks", tuple(tuple(int(p) for p in t) for t in self.tasks))


def was_submitted(catalog: str | Path) -> bool:
    return paths.submission_plan_file(catalog).is_file()


def read_plan(catalog: str | Path) -> SubmissionPlan:
    """The submission record of a catalog (``<catalog>/_slurm/plan.json``)."""
    f = paths.submission_plan_file(catalog)
    if not f.is_file():
        raise MissingFileError(f"{catalog} has no SLURM submission record ({f} is missing)")
    return SubmissionPlan.read(f)


def task_share(tasks_file: str | Path, task_index: int) -> list[int]:
    """The partitions of one array task, from a submission's ``tasks.json``."""
    tasks = TaskList.read(tasks_file).tasks
    if not 0 <= int(task_index) < len(tasks):
        raise UsageError(f"--task-index {task_index} is outside 0..{len(tasks) - 1} of {tasks_file}")
    return list(tasks[int(task_index)])


def balance(counts: dict[int, int], jobs: int) -> list[list[int]]:
    """Split partitions into at most ``jobs`` tasks of near-equal object count (largest first)."""
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    n_tasks = min(jobs, len(counts))
    loads = [0] * n_tasks
    tasks: list[list[int]] = [[] for _ in range(n_tasks)]
    for pixel, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        i = min(range(n_tasks), key=lambda k: (loads[k], k))
        tasks[i].append(pixel)
        loads[i] += n
    return [sorted(t) for t in tasks]
