"""Reading the cutouts at the speed of the bytes: each shard file mapped into memory (its pages
read straight from the page cache, with no copy by the kernel), each inner chunk found through the
shard index, checked (crc32c) and decoded (Blosc releases the GIL) by a pool of threads straight
into the output array, with none of zarr's per-chunk work.

It reads only the store's own layout (a regular grid of shards along the objects, inner chunks
of whole cutouts, codecs ``bytes`` little-endian, optionally ``blosc``, then ``crc32c``, the index
at the end with its own crc32c); :func:`layout_of` returns None for anything else, which the
store then reads through zarr. ``tests/test_store.py`` checks it against zarr for every codec.
A store is never rewritten in place; a shard file cut short while it is mapped would stop the
process (SIGBUS), so its index is checked against the file's size before any chunk is touched.
"""

from __future__ import annotations

import json
import mmap
import os
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
    pool = _pool(threads or os.cpu_count() or 1)
    futures = []
    for shard in range(first // layout.per_shard, last // layout.per_shard + 1):
        data, index = _open_shard(layout, shard)
        for k in range(layout.per_shard):
            c = shard * layout.per_shard + k
            if first <= c <= last:
                futures.append(pool.submit(_decode_chunk, layout, data, c, index[k], start, stop, out))
    for f in futures:
        f.result()
    return out


def _shard_file(layout: ShardLayout, shard: int) -> Path:
    return layout.path.joinpath("c", str(shard), *["0"] * len(layout.item_shape))


def _open_shard(layout: ShardLayout, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """The shard file's bytes, mapped (read straight from the page cache, no copy), and its index
    [chunk, (offset, nbytes)], checked against its crc32c and against the file's size."""
    import google_crc32c

    f = _shard_file(layout, shard)
    name = f.relative_to(layout.path.parent)
    rows = (shard * layout.shard, min(layout.n, (shard + 1) * layout.shard) - 1)
    try:
        with open(f, "rb") as fh:
            data = np.frombuffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    except (OSError, ValueError) as exc:  # ValueError: mmap refuses an empty file
        why = getattr(exc, "strerror", None) or "an empty file"
        raise ChunkError(rows, f"{name} cannot be read ({why})") from None
    size = 16 * layout.per_shard + 4
    raw = data[len(data) - size:] if len(data) >= size else data[:0]
    if len(raw) != size or np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:].tobytes():
        raise ChunkError(rows, f"the index of {name} differs from its checksum")
    index = np.frombuffer(raw[:-4], "<u8").reshape(layout.per_shard, 2).copy()
    written = index[:, 0] != MISSING
    if (index[written, 0] + index[written, 1] > len(data) - size).any():
        raise ChunkError(rows, f"{name} is shorter than its index says")
    return data, index


def _decode_chunk(layout: ShardLayout, data: np.ndarray, c: int, entry: np.ndarray, start: int,
                  stop: int, out: np.ndarray) -> None:
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
    body, crc = data[offset:offset + nbytes - 4], data[offset + nbytes - 4:offset + nbytes]
    if np.uint32(google_crc32c.value(body)).tobytes() != crc.tobytes():
        raise ChunkError(rows, "the chunk's bytes differ from their checksum")
    if layout.blosc:
        numcodecs.blosc.decompress(body, dest)
    elif len(body) != dest.nbytes:
        raise ChunkError(rows, f"the chunk holds {len(body)} bytes, not {dest.nbytes}")
    else:
        dest.reshape(-1).view(np.uint8)[:] = body
    if not whole:
        out[a - start:b - start] = dest[a - lo:b - lo]
