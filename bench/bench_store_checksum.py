"""Cost of the cutout store's crc32c chunk checksums: cutouts/s written and read, with and without.

    OMP_NUM_THREADS=1 python bench/bench_store_checksum.py [--n64 2000] [--n224 500] [--repeats 3]
                                                           [--clock cpu] [--tmp DIR]

For each image size (64x64 and 224x224, float16, five bands) a mock-survey cutout store is written
as ``simulate_survey`` writes it (``simulate_batch`` + ``create_store``/``append_objects``, 256 objects
at a time; not timed) and its stored cutouts are read back. The same cutouts then go into
two Zarr v3 arrays with the store's chunking and sharding (``store.format.chunking``) and its
blosc-zstd codec, one with ``Crc32cCodec()`` after blosc (as ``init_group`` now writes) and one
without. Timed, for each: (a) writing the whole array, (b) reading it back whole and in 256-row
batches as the store reader does; the ratio with/without is the checksum's cost (1.00x: free).
The bytes of each array's shard files are given (the checksum adds 4 bytes per chunk). Last, the
whole reader end to end on the real store (which has the checksums): ``open_store(path)``, then
``read(slice(a, a + 256))`` over every row (float32 out, the reader's default).

Every timing is the best of --repeats runs. BLAS/OpenMP, blosc and Zarr's codec pool are limited
to one thread. The default clock is this process's CPU time (all its threads, user + system),
which other jobs on a shared machine disturb far less than wall-clock time; `--clock wall` for a
dedicated machine. Files are read back from the page cache: this measures the codec's CPU cost, not
the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS"):
    os.environ.setdefault(_var, "1")

import numcodecs.blosc  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402
from zarr.codecs import BloscCodec, Crc32cCodec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from galspec_batch.simulate import simulate_batch  # noqa: E402
from galspec_batch.simulate.sed import BANDS  # noqa: E402
from galspec_batch.simulate.survey import SURVEY_NAME, draw_positions  # noqa: E402
from galspec_batch.sky import healpix_29  # noqa: E402
from galspec_batch.store import create_store, open_store  # noqa: E402
from galspec_batch.store.format import chunking  # noqa: E402

zarr.config.set({"threading.max_workers": 1})  # before the first Zarr call creates the pool
numcodecs.blosc.set_nthreads(1)

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
BATCH = 256  # rows per read, as the store reader's default batch size


def timed(fn, clock) -> float:
    """Seconds of one call of ``fn()`` by ``clock``."""
    start = clock()
    fn()
    return clock() - start


def disk_bytes(path: Path) -> int:
    """Bytes of the array's shard files (its metadata, ``zarr.json``, left out)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def make_array(path: Path, images: np.ndarray, checksum: bool) -> zarr.Array:
    """An empty array laid out like the store's ``images``, with or without the crc32c codec."""
    n, nb, h, w = images.shape
    chunk, shard = chunking((h, w), nb, images.dtype.itemsize)
    blosc = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=images.dtype.itemsize)
    if path.exists():
        shutil.rmtree(path)
    codecs = (blosc, Crc32cCodec()) if checksum else (blosc,)
    return zarr.create_array(str(path), shape=images.shape, dtype=images.dtype, chunks=(chunk, nb, h, w),
                             shards=(shard, nb, h, w), compressors=codecs, fill_value=0, zarr_format=3)


def read_batches(arr: zarr.Array) -> None:
    for a in range(0, arr.shape[0], BATCH):
        np.asarray(arr[a : a + BATCH])


def raw_rows(images: np.ndarray, tmp: Path, repeats: int, clock) -> list[tuple[str, float, float]]:
    """(operation, cutouts/s without, cutouts/s with) for the bare arrays, then their shard bytes.

    The two variants are timed in turn within each repeat, so a change in the machine's load
    falls on both."""
    n = len(images)
    ops = ("write (whole array)", "read (whole array)", f"read ({BATCH}-row batches)")
    paths = {crc: tmp / f"images_{'crc' if crc else 'plain'}.zarr" for crc in (False, True)}
    times: dict[tuple[str, bool], list[float]] = {(op, crc): [] for op in ops for crc in (False, True)}
    for _ in range(repeats):
        for crc in (False, True):
            arr = make_array(paths[crc], images, crc)
            times[ops[0], crc].append(timed(lambda arr=arr: arr.__setitem__(slice(None), images), clock))
    arrays = {crc: zarr.open_array(str(path), mode="r") for crc, path in paths.items()}
    for arr in arrays.values():
        assert np.array_equal(np.asarray(arr[:]), images, equal_nan=True)
    for _ in range(repeats):
        for crc, arr in arrays.items():
            times[ops[1], crc].append(timed(lambda arr=arr: np.asarray(arr[:]), clock))
            times[ops[2], crc].append(timed(lambda arr=arr: read_batches(arr), clock))
    rows = [(op, n / min(times[op, False]), n / min(times[op, True])) for op in ops]
    return rows + [("shard bytes on disk", float(disk_bytes(paths[False])), float(disk_bytes(paths[True])))]


def build_store(path: Path, n: int, size: int) -> None:
    """A mock-survey cutout store as ``simulate_survey`` writes it (without its spectra table):
    objects sorted by sky position, simulated and appended 256 at a time."""
    ra, dec = draw_positions(n, 0)
    order = np.argsort(healpix_29(ra, dec), kind="stable")
    with create_store(path, bands=BANDS, image_shape=(size, size), survey=SURVEY_NAME,
                      zero_points={b: 22.5 for b in BANDS}, dtype="float16") as out:
        for a in range(0, n, BATCH):
            idx = order[a : a + BATCH]
            b = simulate_batch(idx, ra[idx], dec[idx], image_shape=(size, size))
            out.append(b.object_id, b.ra, b.dec, b.images, b.mask)


def store_read_rate(path: Path, n: int, repeats: int, clock) -> float:
    """Cutouts/s of the whole reader on the real store: open it, then read every row in batches."""

    def read():
        store = open_store(path)
        for a in range(0, n, BATCH):
            store.read(slice(a, a + BATCH))

    return n / min(timed(read, clock) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n64", type=int, default=2000, help="cutouts at 64x64 (0: skip)")
    ap.add_argument("--n224", type=int, default=500, help="cutouts at 224x224 (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    ap.add_argument("--tmp", default=None, help="directory for the stores (default: the system temp dir)")
    args = ap.parse_args()
    clock = CLOCKS[args.clock]
    print(f"{os.cpu_count()} CPUs, one codec thread, {args.clock} clock, best of {args.repeats}; "
          f"zarr {zarr.__version__}, float16, 5 bands")
    print(f"\n{'size':>7s}  {'operation':27s} {'no crc32c':>12s} {'crc32c':>12s} {'with/without':>13s}")
    store_lines = []
    for size, n in ((64, args.n64), (224, args.n224)):
        if n <= 0:
            continue
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmpdir:
            tmp = Path(tmpdir)
            build_store(tmp / "survey.zarr", n, size)
            images = open_store(tmp / "survey.zarr").read(slice(None), dtype=None).images
            chunk, shard = chunking((size, size), images.shape[1], images.dtype.itemsize)
            label = f"{size}x{size}"
            for op, plain, crc in raw_rows(images, tmp, args.repeats, clock):
                if op == "shard bytes on disk":
                    extra = f"+{int(crc - plain)} B"
                    print(f"{label:>7s}  {op:27s} {int(plain):12d} {int(crc):12d} {extra:>13s}")
                else:
                    print(f"{label:>7s}  {op:27s} {plain:12.0f} {crc:12.0f} {crc / plain:12.3f}x", flush=True)
            n_chunks = -(-n // chunk)
            print(f"{'':>7s}  ({n} cutouts, {chunk}/chunk, {shard}/shard: {n_chunks} chunks x 4 B = "
                  f"{4 * n_chunks} B expected)")
            store_lines.append((label, store_read_rate(tmp / "survey.zarr", n, args.repeats, clock)))
    print(f"\nreal store (crc32c on every chunk): open_store().read(slice), {BATCH}-row batches, float32 out")
    for label, rate in store_lines:
        print(f"{label:>7s}  {rate:8.0f} cutouts/s")


if __name__ == "__main__":
    main()
