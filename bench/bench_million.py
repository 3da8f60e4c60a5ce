"""A million cutouts for real: write a store of N small cutouts, predict it into a complete HATS
catalog on a local Dask cluster, and watch the memory of the whole process tree stay flat.

    python bench/bench_million.py [--n 1000000] [--size 16] [--model simple-cnn] [--workdir DIR]

Prints the wall time of each step, galaxies/s, the resident memory (parent + Dask workers)
sampled every half second, at 10%, 50% and 100% of the run, and the published collection: its
time to publish, its files against the store's partitions, and its margin cache.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import psutil
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_tiny_checkpoint  # noqa: E402
from hats.io.validation import is_valid_collection  # noqa: E402

from galspec_batch.catalog import catalog_status  # noqa: E402
from galspec_batch.options import PredictOptions
from galspec_batch.predict import finalize_catalog, predict_catalog  # noqa: E402
from galspec_batch.store import create_store, open_store  # noqa: E402


class MemorySampler(threading.Thread):
    """Samples the resident memory of this process and all its children."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.samples, self._halt = period, [], threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        t0 = time.perf_counter()
        while not self._halt.is_set():
            rss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((time.perf_counter() - t0, rss / 2**20))
            time.sleep(self.period)

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join()
        return self.samples


def write_store(path: Path, n: int, size: int, chunk: int = 20_000) -> float:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with create_store(path, image_shape=(size, size), partition_order=5) as w:
        for a in range(0, n, chunk):
            k = min(chunk, n - a)
            ra = rng.uniform(0, 40, k)
            dec = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-20)), np.sin(np.radians(20)), k)))
            img = rng.normal(0, 1, (k, 5, size, size)).astype(np.float16)
            img[:, :, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] += 10
            w.append(np.arange(a, a + k), ra, dec, img)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--model", default="simple-cnn")
    ap.add_argument("--mc", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-million-"))
    work.mkdir(parents=True, exist_ok=True)
    store, ckpt, out = work / "store.zarr", work / "ckpt", work / "catalog"
    for p in (store, ckpt, out):
        shutil.rmtree(p, ignore_errors=True)
    t_store = write_store(store, a.n, a.size)
    s = open_store(store)
    print(f"store: {a.n:,} cutouts {a.size}x{a.size} in {len(s.partitions())} partitions, "
          f"written in {t_store:.0f} s ({a.n / t_store:,.0f}/s)", flush=True)
    make_tiny_checkpoint(ckpt, model=a.model, size=a.size)
    sampler = MemorySampler()
    sampler.start()
    options = PredictOptions(engine="eager", mc_samples=a.mc, batch_size=1024)
    summary = predict_catalog(store, ckpt, out, options, cluster="local", n_workers=a.workers,
                              progress=True, finalize=False)
    samples = sampler.stop()
    t0 = time.perf_counter()
    finalize_catalog(out)
    t_publish = time.perf_counter() - t0
    status = catalog_status(out)
    primary = sorted((out / "latents" / "dataset").glob("Norder=*/Dir=*/*.parquet"))
    margin = sorted(out.glob("latents_*arcs/dataset/Norder=*/Dir=*/*.parquet"))
    margin_rows = sum(pq.read_metadata(f).num_rows for f in margin)
    largest = max(pq.read_metadata(f).num_rows for f in primary)
    print(f"published in {t_publish:.0f} s: {len(primary)} partition files (from {status.count('done')} "
          f"store partitions; largest {largest:,} rows), margin cache {len(margin)} files, "
          f"{margin_rows:,} rows")
    rows = f"read_parquet('{out}/latents/dataset/**/*.parquet')"
    (n_rows, n_ids), = duckdb.sql(f"SELECT count(*), count(DISTINCT object_id) FROM {rows}").fetchall()
    print(f"DuckDB: {n_rows:,} rows, {n_ids:,} distinct ids; hats is_valid_collection(strict=True): "
          f"{is_valid_collection(out, strict=True)}")
    print(f"catalog: complete={status.complete}, {status.objects.get('done', 0):,} objects in "
          f"{status.count('done')} partitions; {summary.objects:,} galaxies in {summary.seconds:.0f} s "
          f"({summary.rate:,.0f} galaxies/s, MC T={a.mc}, {a.workers} workers)")
    t_end = samples[-1][0]
    for frac in (0.1, 0.5, 1.0):
        window = [m for t, m in samples if t <= frac * t_end]
        print(f"  memory of parent + workers up to {frac:4.0%} of the run: max {max(window):,.0f} MiB")
    steady = [m for t, m in samples if 0.2 * t_end <= t <= 0.95 * t_end]
    if steady:
        print(f"  steady state (20-95%): {min(steady):,.0f}-{max(steady):,.0f} MiB")


if __name__ == "__main__":
    main()
