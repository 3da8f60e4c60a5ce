"""The unit of batch work: one sky partition of the store, read -> predict -> write.

The store reads one batch ahead in a thread, so I/O overlaps compute; memory holds at most two
batches plus the partition's output rows.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galspec_batch.catalog import Outputs, write_partition
from galspec_batch.columns import (
    DEC,
    HEALPIX,
    MC_SAMPLES,
    MODEL_ID,
    OBJECT_ID,
    QUALITY_FLAGS,
    RA,
    QualityFlag,
)
from galspec_batch.predict.worker import ModelSpec, get_predictor
from galspec_batch.store import Batch, Partition, open_store


@dataclass(frozen=True)
class PartitionJob:
    store: str
    catalog: str
    partition: Partition
    model_id: str
    outputs: Outputs


def _select(batch: Batch, keep: np.ndarray) -> Batch:
    return Batch(**{k: v[keep] for k, v in vars(batch).items()})


def run_partition(job: PartitionJob, spec: ModelSpec) -> dict:
    """Predict one partition and write it to the catalog; returns counts and timings."""
    t0 = time.perf_counter()
    predictor = get_predictor(spec)
    store = open_store(job.store)
    region, batch_size = spec.options.region, spec.options.batch_size
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("object_id", "ra", "dec", "healpix_29", "flags")}
    predicted: dict[str, list[np.ndarray]] = {}
    # the store's own dtype: the predictor converts it (Predictor.to_device)
    for batch in store.iter_partition(job.partition, batch_size, dtype=None, prefetch=True):
        if region is not None:
            batch = _select(batch, region.contains(batch.ra, batch.dec))
            if len(batch.rows) == 0:
                continue
        for k, v in predictor.predict(batch.images, batch.object_id).items():
            predicted.setdefault(k, []).append(v)
        for k, v in parts.items():
            v.append(getattr(batch, k))
    out = {k: np.concatenate(v) for k, v in predicted.items()}
    n = len(out["mean"]) if out else 0
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    # a prediction that is not a finite number is never written as one: null, and the row flagged
    bad = ~np.all([np.isfinite(v).all(axis=1) for v in out.values()], axis=0) if n else np.zeros(0, bool)
    flags = np.where(bad, cat["flags"] | np.uint16(QualityFlag.BAD_PREDICTION), cat["flags"])
    table = {
        OBJECT_ID: pa.array(cat["object_id"], pa.int64()),
        RA: pa.array(cat["ra"], pa.float64()),
        DEC: pa.array(cat["dec"], pa.float64()),
        HEALPIX: pa.array(cat["healpix_29"], pa.int64()),
    }
    for key, columns in job.outputs.by_part().items():
        for i, c in enumerate(columns):
            values = out[key][:, i] if n else np.zeros(0, np.float32)
            table[c] = pa.array(values, pa.float32(), mask=bad)
    table[MC_SAMPLES] = pa.array(np.full(n, spec.options.mc_samples), pa.int16())
    table[QUALITY_FLAGS] = pa.array(flags, pa.uint16())
    table[MODEL_ID] = pa.array([job.model_id] * n, pa.string())
    write_partition(job.catalog, job.partition.order, job.partition.pixel, pa.table(table),
                    written_by={"engine": predictor.engine.name, "device": str(predictor.device),
                                "host": socket.gethostname()})
    return {
        "order": job.partition.order,
        "pixel": job.partition.pixel,
        "rows": n,
        "seconds": time.perf_counter() - t0,
    }
