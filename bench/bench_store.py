"""Codec and inner-chunk size of the cutout store, chosen by measurement: size ratio, write and
read speed of each candidate at the paper's 224 x 224 on mock cutouts, and the ratio on the real
HSC cutout of tests/data (54 x 54, one per chunk), each read against a memcpy of the same bytes.

    OMP_NUM_THREADS=1 python bench/bench_store.py [--n 512] [--size 224] [--repeat 3]

Reads go in batches of 256: through zarr (one thread), and through the store's own reader
(``store.fastread``: shard files mapped, each inner chunk checked and decoded into one reused
buffer) with one and with two decode threads.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from galspec_batch.store.fastread import layout_of, read_rows  # noqa: E402
from galspec_batch.store.format import CODECS, image_codecs  # noqa: E402

BATCH = 256


def mock_cutouts(n: int, size: int) -> np.ndarray:
    """N mock cutouts (5 bands, float16), as `galspec simulate` draws them."""
    from galspec_batch.simulate import simulate_survey

    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        simulate_survey(work / "s.zarr", work / "s.parquet", n, image_size=size, seed=0)
        from galspec_batch.store import open_store

        return open_store(work / "s.zarr").read(slice(0, n), dtype=None).images
    finally:
        shutil.rmtree(work, ignore_errors=True)


def real_cutouts(n: int) -> np.ndarray:
    """The real HSC cube of tests/data (5 x 54 x 54), N times over (float16). Copies of one cutout
    would compress against each other in a chunk of several, so it is measured one per chunk."""
    from astropy.io import fits

    with fits.open(ROOT / "tests" / "data" / "hsc_images" / "hsc_cut.fits") as hdul:
        cube = np.asarray(hdul[0].data, np.float32)
    return np.repeat(cube[None].astype(np.float16), n, axis=0)


def measure(images: np.ndarray, codec: str, per_chunk: int, repeat: int) -> dict:
    n = len(images)
    shard = max(per_chunk, (32 << 20) // (images[0].nbytes * per_chunk) * per_chunk)
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        t0 = time.perf_counter()
        arr = zarr.create_array(str(work / "a.zarr"), shape=images.shape, dtype=images.dtype,
                                chunks=(per_chunk, *images.shape[1:]), shards=(shard, *images.shape[1:]),
                                compressors=image_codecs(codec, images.dtype.itemsize),
                                fill_value=0, config={"write_empty_chunks": True})
        arr[:] = images
        t_write = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in (work / "a.zarr").rglob("*") if f.is_file())
        layout = layout_of(work / "a.zarr")

        def zarr_read():
            for a in range(0, n, BATCH):
                np.asarray(arr[a:a + BATCH])

        def fast_read(threads):
            out = np.empty((BATCH, *images.shape[1:]), images.dtype)  # one buffer, reused
            for a in range(0, n, BATCH):
                read_rows(layout, a, min(n, a + BATCH), out[:min(n, a + BATCH) - a], threads=threads)

        rates = {"ratio": images.nbytes / size, "write": n / t_write}
        readers = (("read", zarr_read), ("fast1", lambda: fast_read(1)), ("fast2", lambda: fast_read(2)))
        for name, fn in readers:
            best = np.inf
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            rates[name] = n / best
        return rates
    finally:
        shutil.rmtree(work, ignore_errors=True)


def memcpy_rate(images: np.ndarray, repeat: int) -> float:
    out = np.empty((BATCH, *images.shape[1:]), images.dtype)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for a in range(0, len(images), BATCH):
            part = images[a:a + BATCH]
            np.copyto(out[:len(part)], part)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunks", default="1,4,16", help="cutouts per inner chunk to try")
    a = ap.parse_args()
    chunks = [int(c) for c in a.chunks.split(",")]
    cases = (("mock", mock_cutouts(a.n, a.size), chunks), ("real HSC", real_cutouts(a.n), [1]))
    for name, images, per in cases:
        base = memcpy_rate(images, a.repeat)
        shape = " x ".join(str(d) for d in images.shape[1:])
        print(f"\n{name}: {a.n} cutouts of {shape} float16 ({images[0].nbytes / 1024:.0f} KiB each); "
              f"memcpy {base:,.0f} cutouts/s")
        print(f"{'codec':<16}{'per chunk':>10}{'ratio':>8}{'write/s':>10}{'zarr/s':>9}{'x memcpy':>9}"
              f"{'fast 1 thread':>14}{'x memcpy':>9}{'fast 2':>9}")
        for codec in CODECS:
            for per_chunk in per:
                m = measure(images, codec, per_chunk, a.repeat)
                print(f"{codec:<16}{per_chunk:>10}{m['ratio']:>8.3f}{m['write']:>10,.0f}{m['read']:>9,.0f}"
                      f"{m['read'] / base:>9.2f}{m['fast1']:>14,.0f}{m['fast1'] / base:>9.2f}"
                      f"{m['fast2']:>9,.0f}")


if __name__ == "__main__":
    main()

