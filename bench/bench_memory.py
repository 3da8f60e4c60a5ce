"""Peak memory of an in-process ``galspec predict`` as the store grows: flat once the feed's few
buffers are in use (``predict/feed.py``), whatever N. Each run in a fresh process: its peak
(VmHWM), and its resident memory sampled every 0.1 s, whose median over the first and the last
third of the run tells growth (a leak) from the spikes a longer run has more chances to meet.

    python bench/bench_memory.py [--size 224] [--model simple-cnn] [--n 256,1024,2048] [--batch 256]

glibc's allocator settings in the environment reach the runs (``MALLOC_MMAP_THRESHOLD_=1048576``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_predict import rss_child  # noqa: E402
from conftest import make_tiny_checkpoint, make_tiny_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--model", default="simple-cnn")
    ap.add_argument("--n", default="256,1024,2048")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mc", type=int, default=32)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        ckpt = make_tiny_checkpoint(tmp / "ck", model=a.model, size=a.size)
        print(f"# {a.model}, {a.size}x{a.size} px, batch {a.batch}, MC T={a.mc}, in-process, eager")
        first = None
        for n in map(int, a.n.split(",")):
            store = make_tiny_store(tmp / f"s{n}.zarr", n=n, size=a.size, width=3.0, seed=n)
            args = [str(store), str(ckpt), str(tmp / f"c{n}"), "eager", str(a.batch), str(a.mc)]
            t0 = time.perf_counter()
            mib, early, late = rss_child(args)
            first = first or mib
            print(f"N={n:>7,}: peak RSS {mib:7.0f} MiB  (x{mib / first:.2f} of the first); median RSS "
                  f"{early:.0f} MiB in the run's first third, {late:.0f} in its last; "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            shutil.rmtree(store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
