"""Reading the cutouts at the speed of the bytes: each inner chunk's bytes read with one
``pread`` through the shard index, checked (crc32c) and decoded (Blosc releases the GIL) by a
pool of threads straight into the output array, with none of zarr's per-chunk work.

It reads only the store's own layout (a regular grid of shards along the objects, inner chunks
of whole cutouts, codecs ``bytes`` little-endian, optionally ``blosc``, then ``crc32c``, the index
at the end with its own crc32c); :func:`layout_of` returns None for anything else, which the
store then reads through zarr. ``tests/test_store.py`` checks it against zarr for every codec.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

MISSING = 2**64 - 1  # the index's offset and size of a chunk never written


class ChunkError(ValueError):
    """An inner chunk cannot be read: missing, or its bytes differ from their checksum."""

    def __init__(self, rows: tuple[int, int], why: str):
        super().__init__(why)
        self.rows = rows


@dataclass(frozen=True)
class ShardLayout:
    """Where the cutouts of an array live: ``shard`` cutouts a file, ``chunk`` an inner chunk."""

    path: Path
    n: int
    shard: int
    chunk: int
    item_shape: tuple[int, ...]
    dtype: np.dtype
    blosc: bool

    @property
    def per_shard(self) -> int:
        return self.shard // self.chunk


def layout_of(array_dir: Path) -> ShardLayout | None:
    """The layout of a sharded zarr v3 array written as galspec writes images, else None."""
    try:
        meta = json.loads((array_dir / "zarr.json").read_text())
        shape = meta["shape"]
        (shard, *rest) = meta["chunk_grid"]["configuration"]["chunk_shape"]
        (sharding,) = meta["codecs"]
        conf = sharding["configuration"]
        (chunk, *inner_rest) = conf["chunk_shape"]
        names = [c["name"] for c in conf["codecs"]]
        ok = (meta["chunk_grid"]["name"] == "regular" and sharding["name"] == "sharding_indexed"
              and rest == shape[1:] == inner_rest and shard % chunk == 0
              and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
              and names in (["bytes", "blosc", "crc32c"], ["bytes", "crc32c"])
              and conf["codecs"][0]["configuration"]["endian"] == "little"
              and [c["name"] for c in conf["index_codecs"]] == ["bytes", "crc32c"]
              and conf["index_location"] == "end" and meta["data_type"] in ("float16", "float32"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        return None
    return ShardLayout(array_dir, int(shape[0]), int(shard), int(chunk), tuple(shape[1:]),
                       np.dtype(meta["data_type"]).newbyteorder("<"), "blosc" in names)


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="galspec-decode")


def read_rows(layout: ShardLayout, start: int, stop: int, out: np.ndarray | None = None,
              threads: int | None = None) -> np.ndarray:
    """Cutouts [start, stop) into ``out`` (new when None), decoded by ``threads`` (default: one
    per core). Raises ChunkError naming the rows of a chunk that is missing or damaged."""
    out = np.empty((stop - start, *layout.item_shape), layout.dtype) if out is None else out
    if stop <= start:
        return out
    first, last = start // layout.chunk, (stop - 1) // layout.chunk
    tasks = []
    for shard in range(first // layout.per_shard, last // layout.per_shard + 1):
        index = _read_index(layout, shard)
        for k in range(layout.per_shard):
            c = shard * layout.per_shard + k
            if first <= c <= last:
                tasks.append((shard, c, index[k]))
    pool = _pool(threads or os.cpu_count() or 1)
    for f in [pool.submit(_decode_chunk, layout, s, c, entry, start, stop, out) for s, c, entry in tasks]:
        f.result()
    return out


def _shard_file(layout: ShardLayout, shard: int) -> Path:
    return layout.path.joinpath("c", str(shard), *["0"] * len(layout.item_shape))


def _read_index(layout: ShardLayout, shard: int) -> np.ndarray:
    import google_crc32c

    f = _shard_file(layout, shard)
    size = 16 * layout.per_shard + 4
    rows = (shard * layout.shard, min(layout.n, (shard + 1) * layout.shard) - 1)
    try:
        with open(f, "rb") as fh:
            fh.seek(-size, os.SEEK_END)
            raw = fh.read(size)
    except OSError as exc:
        raise ChunkError(rows, f"{f.relative_to(layout.path.parent)} cannot be read ({exc.strerror})") \
            from None
    body, crc = raw[:-4], raw[-4:]
    if len(raw) != size or np.uint32(google_crc32c.value(body)).tobytes() != crc:
        raise ChunkError(rows, f"the index of {f.relative_to(layout.path.parent)} differs from its checksum")
    return np.frombuffer(body, "<u8").reshape(layout.per_shard, 2)


def _decode_chunk(layout: ShardLayout, shard: int, c: int, entry: np.ndarray, start: int, stop: int,
                  out: np.ndarray) -> None:
    import google_crc32c
    import numcodecs.blosc

    lo, hi = c * layout.chunk, (c + 1) * layout.chunk  # the chunk's rows (the last may run past n)
    rows = (max(lo, start), min(hi, stop, layout.n) - 1)
    offset, nbytes = int(entry[0]), int(entry[1])
    if offset == MISSING:
        raise ChunkError(rows, "the chunk was never written")
    a, b = max(lo, start), min(hi, stop)
    whole = a == lo and b == hi
    dest = out[a - start:b - start] if whole else np.empty((layout.chunk, *layout.item_shape),
                                                           layout.dtype)
    # uncompressed: the bytes land in the output itself; compressed: in this thread's reused buffer
    # (a fresh 8 MiB object per chunk costs a page fault per 4 KiB)
    direct = not layout.blosc and nbytes - 4 == dest.nbytes
    if direct:
        body, crc = dest.reshape(-1).view(np.uint8), _scratch(4)[:4]
        buffers = [body, crc]
    else:
        raw = _scratch(nbytes)[:nbytes]
        body, crc = raw[:-4], raw[-4:]
        buffers = [raw]
    fd = os.open(_shard_file(layout, shard), os.O_RDONLY)
    try:
        got = os.preadv(fd, buffers, offset)
    finally:
        os.close(fd)
    if got != nbytes or np.uint32(google_crc32c.value(body)).tobytes() != crc.tobytes():
        raise ChunkError(rows, "the chunk's bytes differ from their checksum")
    if layout.blosc:
        numcodecs.blosc.decompress(body, dest)
    elif not direct:
        raise ChunkError(rows, f"the chunk holds {nbytes - 4} bytes, not {dest.nbytes}")
    if not whole:
        out[a - start:b - start] = dest[a - lo:b - lo]


_local = threading.local()


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's reused read buffer, at least ``nbytes`` long."""
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = _local.buf = np.empty(nbytes, np.uint8)
    return buf
