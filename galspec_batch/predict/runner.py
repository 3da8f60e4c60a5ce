"""The batch runner: a store in, a HATS catalog out, one Dask task per sky partition.

The coordinator plans the partitions (optionally cut to a region), begins or resumes the
catalog, submits the pending partitions to a Dask cluster (or runs them in-process), shows a
progress bar, and finalizes the catalog once every partition is written. Dask retries the task
of a worker that died; a partition that keeps failing is recorded as failed and the run ends
with an error naming it, leaving the rest for a rerun.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from galspec_batch import __version__
from galspec_batch.calibrate import load_calibration
from galspec_batch.catalog import CatalogWriter, mark_failed
from galspec_batch.checkpoint import load_checkpoint
from galspec_batch.errors import GalspecError, InputError
from galspec_batch.predict.task import PartitionJob, run_partition
from galspec_batch.predict.worker import ModelPlugin, ModelSpec
from galspec_batch.progress import progress_bar
from galspec_batch.regions import Region, parse_region, select_partitions
from galspec_batch.store import CutoutStore, Partition, open_store

CLUSTERS = ("local", "none", "cuda")


@dataclass
class PredictSummary:
    catalog: Path
    partitions_done: int
    partitions_skipped: int
    objects: int
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.objects / self.seconds if self.seconds > 0 else float("nan")


class PartitionsFailed(GalspecError, RuntimeError):
    """Some partitions could not be predicted; the rest of the catalog is written."""


def model_id(checkpoint_config: dict, model_hash: str) -> str:
    return f"{checkpoint_config['model']['name']}@{model_hash[:12]}"


def predict_catalog(
    store: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    *,
    region: Region | str | None = None,
    partitions: list[int] | None = None,
    only: list[int] | None = None,
    mc_samples: int = 32,
    engine: str = "auto",
    device: str | None = None,
    precision: str | None = None,
    batch_size: int = 256,
    cluster: object = "local",
    n_workers: int | None = None,
    seed: int = 0,
    finalize: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    retries: int = 2,
    calibrate: bool = True,
) -> PredictSummary:
    """Predict every object of ``store`` (or of ``region``/``partitions``) into the catalog ``out``.

    ``cluster`` is ``"local"`` (a local CPU Dask cluster), ``"cuda"`` (one worker per GPU, with
    dask-cuda), ``"none"`` (in this process, no Dask), a scheduler address, or a
    ``distributed.Client``. A rerun resumes: finished partitions are kept, the rest are redone.
    ``partitions`` limits the catalog to those store partitions; ``only`` runs just these of them
    now (one SLURM array task's share) and implies ``finalize=False`` unless all are done.
    With ``calibrate`` the MC spread is scaled by the checkpoint's ``calibration.json``, if any.
    """
    t0 = time.perf_counter()
    device = device or ("cuda" if cluster == "cuda" else "cpu")
    precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
    settings = {"mc_samples": mc_samples, "engine": engine, "device": device, "precision": precision,
                "batch_size": batch_size, "seed": seed}
    # an array task (``only``) must not rewrite the shared run state the other tasks read
    begun = begin_catalog(store, checkpoint, out, region=region, partitions=partitions, settings=settings,
                          calibrate=calibrate, overwrite=overwrite, record_resume=only is None)
    plan, region_obj, calibration, mid = begun.plan, begun.region, begun.calibration, begun.model_id
    by_key = {(p.order, p.pixel): (p, n) for p, n in plan}
    todo = list(by_key)
    if only is not None:
        share = set(only)
        missing = share - {p.pixel for p, _ in plan}
        if missing:
            raise InputError(f"partitions {sorted(missing)[:5]} are not in the plan of catalog {out}")
        todo = [k for k in todo if k[1] in share]  # never touch the partitions of other tasks
        finalize = False
    pending = [by_key[k] for k in begun.writer.pending(todo)]
    jobs = [
        PartitionJob(str(store), str(out), p, mid, str(region_obj) if region_obj else None, batch_size)
        for p, _ in pending
    ]
    total_rows = sum(n for _, n in pending)
    workers = n_workers or _default_workers(cluster)
    threads = max(1, (os.cpu_count() or 1) // workers) if device == "cpu" else 0
    scale = tuple(float(v) for v in calibration["scale"]) if calibration is not None else None
    spec = ModelSpec(str(checkpoint), engine, device, precision, mc_samples, seed, threads, scale)

    failed: dict[str, str] = {}
    done_rows = 0
    if progress and len(pending) < len(todo):
        print(f"resuming {out}: {len(todo) - len(pending)} of {len(todo)} partitions already done")
    with progress_bar(total_rows, "predict", "galaxies", enabled=progress) as advance:
        if jobs:
            with _client(cluster, workers, spec) as client:
                results = _run_local(jobs, spec) if client is None else _run_dask(client, jobs, spec, retries)
                for job, result in results:
                    name = job.partition.name
                    if isinstance(result, BaseException):
                        failed[name] = f"{type(result).__name__}: {result}"
                        mark_failed(out, job.partition.order, job.partition.pixel, result)
                        continue
                    done_rows += result["rows"]
                    advance(result["rows"])
    if failed:
        first = next(iter(failed.items()))
        raise PartitionsFailed(
            f"{len(failed)} of {len(plan)} partitions of {out} failed (e.g. {first[0]}: {first[1]}); "
            "the others are written: rerun the same command to retry the failed ones"
        )
    if finalize:
        begun.writer.finalize()
    return PredictSummary(Path(out), len(jobs), len(todo) - len(pending), done_rows,
                          time.perf_counter() - t0, failed)


@dataclass
class Begun:
    """A catalog begun (or resumed) for prediction, with what the run needs."""

    writer: CatalogWriter
    plan: list[tuple[Partition, int]]
    region: Region | None
    calibration: dict | None
    model_id: str


def begin_catalog(store: str | Path, checkpoint: str | Path, out: str | Path, *,
                  region: Region | str | None = None, partitions: list[int] | None = None,
                  settings: dict | None = None, calibrate: bool = True, overwrite: bool = False,
                  record_resume: bool = True) -> Begun:
    """Check store and checkpoint against each other, plan the partitions, and begin the catalog
    (or resume it) with its provenance. ``galspec submit`` calls this once before its array tasks."""
    store_obj = open_store(store)
    ckpt = load_checkpoint(checkpoint)
    _check_compatible(store_obj, ckpt.config, checkpoint)
    calibration = load_calibration(checkpoint) if calibrate else None
    region_obj = parse_region(region) if region is not None else None
    plan = select_partitions(store_obj, region_obj, partitions)
    mid = model_id(ckpt.config, ckpt.model_hash)
    provenance = {
        "model": {"id": mid, "hash": ckpt.model_hash, "checkpoint": str(Path(checkpoint).resolve()),
                  "config": ckpt.config},
        "store": {"path": str(Path(store).resolve()), "fingerprint": store_obj.fingerprint(),
                  "n_objects": store_obj.n_objects, "survey": store_obj.survey},
        "run": {**(settings or {}), "region": str(region_obj) if region_obj else None},
        "code_version": __version__,
    }
    if calibration is not None:
        provenance["calibration"] = {k: calibration[k] for k in ("scale", "method", "created", "model_hash")}
    writer = CatalogWriter.begin(
        out, n_latents=ckpt.net.n_out, store_fingerprint=store_obj.fingerprint(), provenance=provenance,
        partition_order=store_obj.partition_order, model_id=mid, overwrite=overwrite,
        plan=[(p.order, p.pixel, n) for p, n in plan], record_resume=record_resume,
    )
    return Begun(writer, plan, region_obj, calibration, mid)


def finalize_catalog(out: str | Path) -> dict:
    """Finish a catalog whose partitions were written by separate jobs (e.g. a SLURM array)."""
    from galspec_batch.catalog.state import read_run_state

    run = read_run_state(out)
    writer = CatalogWriter(Path(out), run)
    return writer.finalize()


def _check_compatible(store: CutoutStore, config: dict, checkpoint: str | Path) -> None:
    bands = tuple(config["bands"])
    if bands != store.bands:
        raise InputError(
            f"checkpoint {checkpoint} was trained on bands {''.join(bands)} but store {store.path} has "
            f"{''.join(store.bands)}"
        )
    scale = config.get("pixel_scale")
    if scale is not None and abs(float(scale) - store.pixel_scale) > 1e-3 * float(scale):
        raise InputError(
            f"checkpoint {checkpoint} was trained at {scale}\"/px but store {store.path} has "
            f"{store.pixel_scale}\"/px"
        )
    if tuple(config["image_size"]) != store.image_shape:
        raise InputError(
            f"checkpoint {checkpoint} expects {tuple(config['image_size'])} images but store "
            f"{store.path} holds {store.image_shape}"
        )


def _default_workers(cluster: object) -> int:
    if cluster == "none":
        return 1
    if cluster == "cuda":
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, min(2, os.cpu_count() or 1))


def _run_local(jobs: list[PartitionJob], spec: ModelSpec) -> Iterator[tuple[PartitionJob, object]]:
    for job in jobs:
        try:
            yield job, run_partition(job, spec)
        except Exception as exc:  # noqa: BLE001 - recorded as the partition's failure, the run goes on
            yield job, exc


def _run_dask(client, jobs: list[PartitionJob], spec: ModelSpec, retries: int):
    from distributed import as_completed

    futures = {
        client.submit(run_partition, job, spec, key=f"galspec-{job.partition.order}-{job.partition.pixel}-"
                      f"{os.getpid()}-{time.time_ns()}", retries=retries, pure=False): job
        for job in jobs
    }
    for fut in as_completed(futures):
        job = futures[fut]
        try:
            yield job, fut.result()
        except Exception as exc:  # noqa: BLE001 - a task's failure is recorded, the run goes on
            yield job, exc


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
        local = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                             dashboard_address=None, memory_limit=0)
    elif cluster == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise InputError("cluster 'cuda' needs dask-cuda: pip install 'galspec-batch[gpu]'") from exc
        local = LocalCUDACluster(threads_per_worker=1, dashboard_address=None)
    elif isinstance(cluster, str) and "://" in cluster:
        local = None
    else:
        raise InputError(f"unknown cluster {cluster!r}; use one of {CLUSTERS} or a scheduler address")
    client = Client(local if local is not None else cluster)
    try:
        client.register_plugin(ModelPlugin(spec), name=ModelPlugin.name)
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()
