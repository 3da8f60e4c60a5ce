"""The unit of batch work: one sky partition of the store, read -> predict -> write.

The store reads one batch ahead in a thread, so I/O overlaps compute; memory holds at most two
batches plus the partition's output rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galspec_batch.catalog import write_partition
from galspec_batch.catalog.schema import latent_column, latent_std_column
from galspec_batch.predict.worker import ModelSpec, get_predictor
from galspec_batch.regions import parse_region
from galspec_batch.store import Batch, Partition, open_store


@dataclass(frozen=True)
class PartitionJob:
    store: str
    catalog: str
    partition: Partition
    model_id: str
    region: str | None = None
    batch_size: int = 256


def _select(batch: Batch, keep: np.ndarray) -> Batch:
    return Batch(**{k: v[keep] for k, v in vars(batch).items()})


def run_partition(job: PartitionJob, spec: ModelSpec) -> dict:
    """Predict one partition and write it to the catalog; returns counts and timings."""
    t0 = time.perf_counter()
    predictor = get_predictor(spec)
    store = open_store(job.store)
    region = parse_region(job.region) if job.region else None
    n_latents = predictor.weight.shape[0]
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("object_id", "ra", "dec", "_healpix_29", "flags")}
    means, stds = [], []
    for batch in store.iter_partition(job.partition, job.batch_size, predictor.read_dtype, prefetch=True):
        if region is not None:
            batch = _select(batch, region.contains(batch.ra, batch.dec))
            if len(batch.rows) == 0:
                continue
        mean, std = predictor.predict(batch.images, batch.object_id)
        means.append(mean)
        stds.append(std)
        for k in ("object_id", "ra", "dec", "healpix_29", "flags"):
            cols["_healpix_29" if k == "healpix_29" else k].append(getattr(batch, k))
    n = sum(len(m) for m in means)
    mean = np.concatenate(means) if means else np.zeros((0, n_latents), np.float32)
    std = np.concatenate(stds) if stds else np.zeros((0, n_latents), np.float32)
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    table = {
        "object_id": pa.array(cat["object_id"], pa.int64()),
        "ra": pa.array(cat["ra"], pa.float64()),
        "dec": pa.array(cat["dec"], pa.float64()),
        "_healpix_29": pa.array(cat["_healpix_29"], pa.int64()),
    }
    for i in range(n_latents):
        table[latent_column(i + 1)] = pa.array(mean[:, i], pa.float32())
    for i in range(n_latents):
        table[latent_std_column(i + 1)] = pa.array(std[:, i], pa.float32())
    table["mc_samples"] = pa.array(np.full(n, spec.mc_samples), pa.int16())
    table["quality_flags"] = pa.array(cat["flags"], pa.uint16())
    table["model_id"] = pa.array([job.model_id] * n, pa.string())
    write_partition(job.catalog, job.partition.order, job.partition.pixel, pa.table(table))
    return {
        "order": job.partition.order,
        "pixel": job.partition.pixel,
        "rows": n,
        "seconds": time.perf_counter() - t0,
    }
