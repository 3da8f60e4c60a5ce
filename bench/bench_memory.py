"""Peak memory of an in-process ``galspec predict`` as the store grows, which the feed's few
reused buffers (``predict/feed.py``) should keep flat whatever N. Each run in a fresh process: its peak
(VmHWM), and its resident memory sampled every 0.02 s: its 99th percentile, and its median over
the first and the last third of the run, which tell growth (a leak, or freed memory the allocator
keeps) from the spikes of a batch's temporaries, which a longer run has more chances to meet at
their worst. A predicting process trims the heap now and then (``trim_freed_memory``).

    python bench/bench_memory.py [--size 224] [--model simple-cnn] [--n 1024,10240] [--batch 256]

The stores are written 1,024 cutouts at a time, so a large N fits in memory while it is made.
Then (not with --no-repeat) nine runs on the first store in one process, with and without the
heap trim in turn: the time of each, the anonymous memory after each, before and after glibc's
``malloc_trim`` (memory freed but kept by the allocator), and Python's object count, which tell a
leak from an allocator that holds on to freed blocks.

glibc's allocator settings in the environment reach the runs (``MALLOC_MMAP_THRESHOLD_=1048576``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_predict import rss_child  # noqa: E402
from conftest import make_tiny_checkpoint  # noqa: E402

from galspec_batch import defaults as D  # noqa: E402
from galspec_batch.store import create_store  # noqa: E402

CHUNK = 1024


def make_store(path: Path, n: int, size: int, seed: int) -> Path:
    """``n`` noise cutouts with a bright centre over 3 x 3 degrees, written CHUNK at a time."""
    rng = np.random.default_rng(seed)
    with create_store(path, image_shape=(size, size), partition_order=4) as w:
        for a in range(0, n, CHUNK):
            m = min(CHUNK, n - a)
            images = rng.normal(0, 1, (m, 5, size, size)).astype(np.float32)
            images[:, :, size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2] += 10
            w.append(np.arange(a, a + m), rng.uniform(150, 153, m), rng.uniform(-1.5, 1.5, m), images,
                     np.ones((m, 5), bool))
    return path


REPEAT_CHILD = """
import ctypes, gc, sys, time
import numpy as np
import galspec_batch.predict.task as task
from galspec_batch.options import PredictOptions
from galspec_batch.predict import predict_catalog
def anon():
    rollup = open('/proc/self/smaps_rollup').read().split()
    return int(rollup[rollup.index('Anonymous:') + 1]) / 1024
libc = ctypes.CDLL('libc.so.6')
trim = task.trim_freed_memory
seconds_by = {True: [], False: []}
for i in range(9):  # the first pays first calls: memory counted, time not
    task.trim_freed_memory = trim if i % 2 == 0 else (lambda: False)
    t0 = time.perf_counter()
    predict_catalog(sys.argv[1], sys.argv[2], sys.argv[3] + str(i), PredictOptions(engine='eager',
                    batch_size=int(sys.argv[4]), mc_samples=int(sys.argv[5])), cluster='none', progress=False)
    seconds = time.perf_counter() - t0
    if i:
        seconds_by[i % 2 == 0].append(seconds)
    gc.collect()
    kept = anon()
    libc.malloc_trim(0)
    print(f'run {i + 1}, heap trimmed: {i % 2 == 0}: {seconds:.2f} s; then anonymous memory '
          f'{kept:.0f} MiB, {anon():.0f} after malloc_trim; {len(gc.get_objects()):,} Python objects',
          flush=True)
median = {k: float(np.median(v)) for k, v in seconds_by.items()}
print(f'median seconds of runs 2-9: trimmed {median[True]:.2f}, not {median[False]:.2f} '
      f'(x{median[False] / median[True]:.3f} speed with the trim)')
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--model", default="simple-cnn")
    ap.add_argument("--n", default="1024,10240")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mc", type=int, default=32)
    ap.add_argument("--no-repeat", action="store_true", help="skip the nine runs in one process")
    ap.add_argument("--no-trim", action="store_true", help="the runs at N and 10N without the heap trim")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        ckpt = make_tiny_checkpoint(tmp / "ck", model=a.model, size=a.size)
        print(f"# {a.model}, {a.size}x{a.size} px, batch {a.batch}, MC T={a.mc}, in-process, eager, "
              f"heap trimmed: {not a.no_trim} (at most every {D.TRIM_INTERVAL_S:g} s)")
        first = first99 = None
        sizes = list(map(int, a.n.split(",")))
        for n in sizes:
            store = make_store(tmp / f"s{n}.zarr", n, a.size, seed=n)
            args = [str(store), str(ckpt), str(tmp / f"c{n}"), "eager", str(a.batch), str(a.mc),
                    *(["notrim"] if a.no_trim else [])]
            t0 = time.perf_counter()
            mib, p99, early, late = rss_child(args)
            first, first99 = first or mib, first99 or p99
            print(f"N={n:>7,}: peak RSS {mib:7.0f} MiB (x{mib / first:.2f} of the first), 99th percentile "
                  f"{p99:.0f} (x{p99 / first99:.2f}); median {early:.0f} MiB in the run's first third, "
                  f"{late:.0f} in its last; "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            if n != sizes[0] or a.no_repeat:
                shutil.rmtree(store)
        if not a.no_repeat:
            store = tmp / f"s{sizes[0]}.zarr"
            subprocess.run([sys.executable, "-c", REPEAT_CHILD, str(store), str(ckpt), str(tmp / "r"),
                            str(a.batch), str(a.mc)], check=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
