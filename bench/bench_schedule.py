"""Before/after of how predict work is cut into tasks (issue 15's causes 2 and 4), in one process:

- ``per-partition``: one task per store partition, the old way (``max_task_rows=None``): the
  largest partition can start last and run alone, and a partition smaller than one batch is read
  with nothing read ahead;
- ``bounded``: the default (``predict/tasks.py``): big partitions cut into slices, small ones
  packed, tasks read ahead across the partitions they pack.

Each way runs in-process (``--cluster none``) and on a local Dask cluster of ``--workers`` one-thread
workers (its start included: the user pays it), on the same store, model and options.

    OMP_NUM_THREADS=1 python bench/bench_schedule.py [--n 16384] [--size 64] [--order 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_tiny_checkpoint  # noqa: E402

from galspec_batch.options import PredictOptions  # noqa: E402
from galspec_batch.predict import predict_catalog  # noqa: E402
from galspec_batch.predict.tasks import plan_tasks, task_rows  # noqa: E402
from galspec_batch.store import create_store, open_store  # noqa: E402


def make_store(path: Path, n: int, size: int, order: int, seed: int = 0) -> Path:
    """``n`` noise cutouts over a 6-degree field, clustered like galaxies (uneven partitions)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.uniform([150, -3], [156, 3], (12, 2))
    pick = rng.integers(0, len(centres), n)
    ra = np.clip(centres[pick, 0] + rng.normal(0, 0.6, n), 150, 156)
    dec = np.clip(centres[pick, 1] + rng.normal(0, 0.6, n), -3, 3)
    with create_store(path, image_shape=(size, size), partition_order=order) as w:
        for a in range(0, n, 2048):
            b = min(n, a + 2048)
            images = rng.normal(0, 1, (b - a, 5, size, size)).astype(np.float32)
            w.append(np.arange(a, b) + 10**6, ra[a:b], dec[a:b], images, np.ones((b - a, 5), bool))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--order", type=int, default=4, help="the store's partition order")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="simple-cnn")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_schedule_"))
    try:
        store = make_store(tmp / "store.zarr", args.n, args.size, args.order)
        ckpt = make_tiny_checkpoint(tmp / "ckpt", model=args.model, size=args.size)
        parts = open_store(store).partitions()
        sizes = sorted((p.n for p in parts), reverse=True)
        print(f"{args.n} cutouts at {args.size} px, {len(parts)} partitions at order {args.order} "
              f"(largest {sizes[:3]}, smallest {sizes[-1]}), {args.model}, T=32, batch {args.batch}")
        opts = PredictOptions(engine="eager", mc_samples=32, batch_size=args.batch)
        rows: dict[tuple[str, str], float] = {}
        # warm-up: the model loaded and the engine built in this process, outside every clock
        predict_catalog(store, ckpt, tmp / "warm", opts, cluster="none", progress=False)
        for cluster in ("none", "local"):
            for way, limit in (("per-partition", None), ("bounded", "default")):
                out = tmp / f"cat-{cluster}-{way}"
                kw = {} if limit == "default" else {"max_task_rows": None}
                t0 = time.perf_counter()
                predict_catalog(store, ckpt, out, opts, cluster=cluster, n_workers=args.workers,
                                progress=False, **kw)
                rows[cluster, way] = args.n / (time.perf_counter() - t0)
                shutil.rmtree(out)
        for workers, name in ((1, "none"), (args.workers, "local")):
            tasks = plan_tasks(parts, task_rows(args.n, workers, args.batch))
            print(f"bounded tasks ({name}): {len(tasks)}, {max(t.n for t in tasks)} rows at most")
        base = rows["none", "per-partition"]
        print(f"\n{'cluster':8} {'tasks':14} {'cutouts/s':>10} {'vs in-process per-partition':>28}")
        for (cluster, way), rate in rows.items():
            print(f"{cluster:8} {way:14} {rate:10.1f} {rate / base:27.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
