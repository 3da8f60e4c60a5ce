"""Mock-survey speed: cutouts (with their spectra) per second on one core.

    python bench/bench_simulate.py [--n 1024] [--sizes 64 224]

Times ``simulate_batch`` (galaxies, cutouts, spectra) and the full ``simulate_survey`` (adding the
Zarr store and Parquet writes) with BLAS/FFT threads limited to one. Prints wall-clock and CPU
rates: on a shared machine the CPU rate is the one-core speed. Target: >= 200 cutouts/s at 64x64.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from galspec_batch.simulate import simulate_batch, simulate_survey  # noqa: E402


def _rate(fn, *args, **kwargs) -> tuple[float, float]:
    """Objects per second (wall clock, CPU) of ``fn(*args, **kwargs)``; ``args[0]`` gives the count."""
    n = args[0] if isinstance(args[0], int) else len(args[0])
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def _survey(n: int, tmp: str, size: int) -> None:
    simulate_survey(f"{tmp}/s.zarr", f"{tmp}/s.parquet", n, image_size=size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="objects at 64x64 (a quarter of it at larger sizes)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    args = ap.parse_args()
    for size in args.sizes:
        n = args.n if size <= 64 else max(args.n // 4, 32)
        idx = np.arange(n)
        shape = (size, size)
        simulate_batch(idx[:8], np.zeros(8), np.zeros(8), image_shape=shape)  # warm the caches
        wall, cpu = _rate(simulate_batch, idx, np.zeros(n), np.zeros(n), image_shape=shape)
        print(f"simulate_batch  {size}x{size}: {wall:7.1f} cutouts/s wall, {cpu:7.1f} cutouts/s CPU (n={n})")
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = _rate(_survey, n, tmp, size)
        print(f"simulate_survey {size}x{size}: {wall:7.1f} cutouts/s wall, {cpu:7.1f} cutouts/s CPU (n={n})")


if __name__ == "__main__":
    main()
