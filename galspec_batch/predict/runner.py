"""The batch runner: a store in, a HATS catalog out, in tasks of bounded size.

The coordinator plans the partitions (optionally cut to a region), begins or resumes the
catalog, cuts the pending partitions into tasks (:mod:`galspec_batch.predict.tasks`), submits
them to a Dask cluster (or runs them in-process), shows a progress bar, and finalizes the
catalog once every partition is written. The partition stays the unit of output and resume.
Dask retries the task of a worker that died; a partition that keeps failing is recorded as
failed and the run ends with an error naming it, leaving the rest for a rerun.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from galspec_batch import defaults as D
from galspec_batch.catalog import CatalogWriter, mark_failed
from galspec_batch.catalog.lock import catalog_lock
from galspec_batch.catalog.state import check_partition
from galspec_batch.errors import GalspecError, UsageError, first_line, raise_if_signalled
from galspec_batch.options import CLUSTERS, PredictOptions
from galspec_batch.predict.begin import begin_catalog, join_catalog
from galspec_batch.predict.feed import release_kept_pool
from galspec_batch.predict.task import TaskJob, run_task, write_slices
from galspec_batch.predict.tasks import plan_tasks, task_rows
from galspec_batch.predict.worker import ModelPlugin, ModelSpec
from galspec_batch.progress import Progress
from galspec_batch.store import Partition


@dataclass
class PredictSummary:
    catalog: Path
    partitions_done: int
    partitions_skipped: int
    objects: int
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)
    repaired: int = 0  # damaged or missing partitions of a finished catalog, written again
    finalized: bool = False  # this run wrote the catalog's HATS metadata
    calibrated: bool = True  # the spreads are calibrated (the checkpoint had a calibration)
    cluster: str = "none"  # where it ran: none (in-process), local, cuda, or a scheduler

    @property
    def rate(self) -> float:
        return self.objects / self.seconds if self.seconds > 0 else float("nan")


class PartitionsFailed(GalspecError, RuntimeError):
    """Some partitions could not be predicted; the rest of the catalog is written."""


def predict_catalog(
    store: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    only: list[int] | None = None,
    cluster: object = D.CLUSTER,
    n_workers: int | None = None,
    finalize: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    retries: int = 2,
    max_task_rows: int | None = D.MAX_TASK_ROWS,
) -> PredictSummary:
    """Predict every object of ``store`` selected by ``options`` into the catalog ``out``.

    ``cluster`` is ``"auto"`` (see :func:`resolve_cluster`), ``"local"`` (a local CPU Dask
    cluster), ``"cuda"`` (one worker per GPU, with dask-cuda), ``"none"`` (in this process, no
    Dask), a scheduler address, or a ``distributed.Client``. A rerun resumes: finished partitions
    are kept, the rest are redone. ``only`` runs just these partitions of a catalog its
    coordinator already began (one SLURM array task's share), with the identity the coordinator
    recorded, and never finalizes. Tasks hold at most ``max_task_rows`` rows (see
    :mod:`galspec_batch.predict.tasks`; None: one task per partition, as before that existed).
    """
    t0 = time.perf_counter()
    options = options or PredictOptions()
    _check_cluster(cluster)  # a command line that cannot run is refused before the catalog begins
    cluster = resolve_cluster(cluster, store, options.device)
    ran_on = cluster if isinstance(cluster, str) else "client"
    workers = n_workers or _default_workers(cluster)
    threads = max(1, (os.cpu_count() or 1) // workers) if options.device == "cpu" else 0
    # a coordinator holds the catalog alone; the array tasks of one submission share it
    with catalog_lock(out, shared=only is not None, command="galspec predict"):
        if only is None:
            begun = begin_catalog(store, checkpoint, out, options, overwrite=overwrite, threads=threads)
        else:
            begun = join_catalog(store, out, options, only)
            finalize = False
        todo = [(p.order, p.pixel) for p, _ in begun.plan]
        if begun.writer.complete:  # finished and verified whole: nothing to do
            return PredictSummary(Path(out), 0, len(todo), 0, time.perf_counter() - t0,
                                  calibrated=begun.identity.std_scale is not None, cluster=ran_on)
        by_key = {(p.order, p.pixel): (p, n) for p, n in begun.plan}
        pending = [by_key[k] for k in begun.writer.pending(todo)]
        ident = begun.identity
        spec = ModelSpec(str(checkpoint), ident.model_hash, ident.config_hash, begun.options, threads,
                         ident.std_scale, ident.flux_scale)
        parts = [p for p, _ in pending]
        rows = None if max_task_rows is None else task_rows(sum(p.n for p in parts), workers,
                                                            begun.options.batch_size, max_task_rows)
        jobs = [TaskJob(str(store), str(out), t, ident.model_id, ident.outputs)
                for t in plan_tasks(parts, rows)]
        failed = _run(jobs, spec, cluster, workers, retries, out, sum(n for _, n in pending), progress,
                      note=_resume_note(out, begun.writer.repairs, len(todo) - len(pending), len(todo)))
        if failed:
            first = next(iter(failed.items()))
            written = len(parts) - len(failed)
            raise PartitionsFailed(
                f"{len(failed)} of {len(parts)} partitions of {out} failed (e.g. {first[0]}: {first[1]}); "
                f"{written} were written now and {len(todo) - len(pending)} before: rerun the same command "
                "to retry the failed ones"
            )
        if finalize:
            begun.writer.finalize()
    done_rows = sum(n for _, n in pending)
    return PredictSummary(Path(out), len(pending), len(todo) - len(pending), done_rows,
                          time.perf_counter() - t0, failed, repaired=len(begun.writer.repairs),
                          finalized=finalize, calibrated=begun.identity.std_scale is not None,
                          cluster=ran_on)


def _resume_note(out, repairs: dict, n_done: int, n_todo: int) -> str | None:
    if repairs:
        (o, p), why = next(iter(repairs.items()))
        return (f"repairing {out}: {len(repairs)} of {n_todo} partitions are damaged or missing "
                f"(e.g. Norder={o} Npix={p}: {why})")
    if n_done:
        return f"resuming {out}: {n_done} of {n_todo} partitions already done"
    return None


def _run(jobs: list[TaskJob], spec: ModelSpec, cluster: object, workers: int, retries: int, out,
         total_rows: int, progress: bool, note: str | None) -> dict[str, str]:
    """Run the tasks; the partitions that failed by name, each recorded in the catalog."""
    failed: dict[str, str] = {}
    with Progress(progress) as bar:
        if note:
            bar.log(note)
        advance = bar.task("predict", total_rows, "galaxies")
        if not jobs:
            return failed
        with _client(cluster, workers, spec) as client:
            if client is None:
                results = _run_local(jobs, spec, advance)
            else:
                results = _run_dask(client, jobs, spec, retries)
            for parts, result in results:
                raise_if_signalled()
                if isinstance(result, BaseException):
                    why = f"{type(result).__name__}: {first_line(result)}"
                    for p in parts:
                        if check_partition(out, p.order, p.pixel) is not None:  # not written
                            # a packed task stops at its first failing partition; the rest never ran
                            failed[p.name] = why if p.name in why else f"not run: its task stopped ({why})"
                            mark_failed(out, p.order, p.pixel, failed[p.name])
                elif client is not None:
                    advance(result["rows"])
    return failed


def finalize_catalog(out: str | Path) -> dict:
    """Finish a catalog whose partitions were written by separate jobs (e.g. a SLURM array)."""
    from galspec_batch.catalog.state import read_run_state

    with catalog_lock(out, command="galspec finalize"):
        return CatalogWriter(Path(out), read_run_state(out)).finalize()


def resolve_cluster(cluster: object, store: str | Path, device: str) -> object:
    """``auto``: on a GPU, one worker per GPU with more than one, else in-process; on the CPU, a
    local cluster for a store of at least ``AUTO_CLUSTER_MIN_OBJECTS`` on a machine of at least
    ``AUTO_CLUSTER_MIN_CORES`` cores, else in-process. Any other value as it is."""
    if cluster != "auto":
        return cluster
    if device.startswith("cuda"):
        import torch

        return "cuda" if torch.cuda.device_count() > 1 else "none"
    from galspec_batch.store import open_store

    big = open_store(store).n_objects >= D.AUTO_CLUSTER_MIN_OBJECTS
    return "local" if big and (os.cpu_count() or 1) >= D.AUTO_CLUSTER_MIN_CORES else "none"


def _check_cluster(cluster: object) -> None:
    if isinstance(cluster, str) and cluster not in CLUSTERS and "://" not in cluster:
        raise UsageError(f"unknown --cluster {cluster!r}; use one of {', '.join(CLUSTERS)} or a scheduler "
                         "address (tcp://host:port)")


def _default_workers(cluster: object) -> int:
    if cluster == "none":
        return 1
    if cluster == "cuda":
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, min(2, os.cpu_count() or 1))


def _run_local(jobs: list[TaskJob], spec: ModelSpec, advance) -> Iterator[tuple[list[Partition], object]]:
    try:
        yield from _run_tasks(jobs, spec, advance)
    finally:
        release_kept_pool()  # a notebook's process does not hold a batch's buffers after the run


def _run_tasks(jobs: list[TaskJob], spec: ModelSpec, advance) -> Iterator[tuple[list[Partition], object]]:
    slices: dict[Partition, list[dict]] = {}
    for job in jobs:
        try:
            result = run_task(job, spec, on_rows=advance)
        except Exception as exc:  # noqa: BLE001 - recorded as the partitions' failure, the run goes on
            yield job.task.partitions, exc
            continue
        yield [], result
        for piece in job.task.pieces:
            if not piece.whole:
                done = slices.setdefault(piece.partition, [])
                done.append(result)
                if len(done) == piece.of:
                    del slices[piece.partition]  # its rows are written now: not kept to the end
                    try:
                        yield [piece.partition], write_slices(job.catalog, piece.partition, piece.of, *done)
                    except Exception as exc:  # noqa: BLE001 - as above
                        yield [piece.partition], exc


def _summary(result: dict) -> dict:
    """What the coordinator needs of a task's result (not the slices' rows)."""
    return {"rows": result["rows"], "written": result["written"]}


def _run_dask(client, jobs: list[TaskJob], spec: ModelSpec, retries: int):
    """Run the tasks on Dask (see ``_submit``); each finished one's partitions and summary."""
    from distributed import as_completed

    watched = _submit(client, jobs, spec, retries)
    for fut in as_completed(list(watched)):
        parts = watched.pop(fut)
        try:
            yield parts, fut.result()
        except Exception as exc:  # noqa: BLE001 - a task's failure is recorded, the run goes on
            yield parts, exc


def _submit(client, jobs: list[TaskJob], spec: ModelSpec, retries: int) -> dict:
    """Submit the tasks largest first (ranked so, so that no big one starts last and runs alone),
    and for each partition cut into slices a task that writes it once its slices are done. Only
    summaries are watched here: a slice's rows go from worker to worker and are released once
    written, as no reference to a task's full result is kept."""
    run = f"{os.getpid()}-{time.time_ns()}"
    numbers = itertools.count()

    def key(what: str) -> str:
        return f"galspec-{what}-{run}-{next(numbers)}"

    watched: dict = {}
    by_partition: dict[Partition, list] = {}
    for job in jobs:
        task = client.submit(run_task, job, spec, key=key("task"), retries=retries, pure=False,
                             priority=job.task.n)
        watched[client.submit(_summary, task, key=key("summary"), pure=False)] = job.task.partitions
        for piece in job.task.pieces:
            if not piece.whole:
                by_partition.setdefault(piece.partition, []).append(task)
    for part, tasks in by_partition.items():
        write = client.submit(write_slices, jobs[0].catalog, part, len(tasks), *tasks, key=key("write"),
                              retries=retries, pure=False, priority=part.n)
        watched[write] = [part]
    return watched


@contextlib.contextmanager
def _signals_held():
    """Start worker processes that ignore SIGINT (a terminal's Ctrl-C reaches its whole process
    group, and only the coordinator should act on it: it stops the workers), and hold a SIGTERM
    until the cluster is up, so that no half-started cluster is left to print tracebacks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored at exec: the workers inherit it
    old_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        if held:
            os.kill(os.getpid(), held[0])


@contextlib.contextmanager
def _client(cluster: object, n_workers: int, spec: ModelSpec):
    """A Dask client for ``cluster`` with the model plugin registered (None: run in-process)."""
    if cluster == "none":
        yield None
        return
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        cluster.register_plugin(ModelPlugin(spec), name=ModelPlugin.name)
        yield cluster
        return
    if cluster == "local":
        with _signals_held():
            local = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=0,
                                 dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
    elif cluster == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise UsageError("--cluster cuda needs dask-cuda: pip install 'galspec-batch[gpu]'") from exc
        with _signals_held():
            local = LocalCUDACluster(threads_per_worker=1, dashboard_address="127.0.0.1:0",
                                     silence_logs=logging.CRITICAL)
    else:
        local = None  # a scheduler address (checked by _check_cluster)
    client = Client(local if local is not None else cluster)
    try:
        client.register_plugin(ModelPlugin(spec), name=ModelPlugin.name)
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()
