"""Reading a cutout store: its attributes, per-object columns, sky partitions and batches of
images with bounded memory (one batch read ahead in a thread)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import zarr

from galspec_batch.columns import DEC, HEALPIX, OBJECT_ID, RA
from galspec_batch.errors import FormatError, InputError, MissingFileError, first_line
from galspec_batch.options import DEFAULT_BATCH_SIZE
from galspec_batch.sky import pixel_at_order
from galspec_batch.store.fastread import layout_of, read_rows
from galspec_batch.store.format import FLAGS, IMAGES, MASK, PARTITIONS, StoreAttrs


@dataclass(frozen=True)
class Partition:
    """A sky partition: one HEALPix pixel at ``order`` and the store rows inside it."""

    order: int
    pixel: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def n(self) -> int:
        return sum(stop - start for start, stop in self.ranges)

    @property
    def name(self) -> str:
        return f"Norder={self.order}/Npix={self.pixel}"


@dataclass
class Batch:
    """One batch read from the store; ``images`` are float32 with NaN kept."""

    rows: np.ndarray
    object_id: np.ndarray
    images: np.ndarray
    mask: np.ndarray
    flags: np.ndarray
    ra: np.ndarray = field(repr=False)
    dec: np.ndarray = field(repr=False)
    healpix_29: np.ndarray = field(repr=False)


def open_store(path: str | Path) -> CutoutStore:
    """Open an existing store for reading (and appending)."""
    return CutoutStore(Path(path))


class CutoutStore:
    """A cutout store on disk. Per-object columns are loaded lazily and cached."""

    def __init__(self, path: Path, _writable: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"cutout store {self.path} does not exist")
        try:
            self._root = zarr.open_group(str(self.path), mode="r+" if _writable else "r", zarr_format=3)
        except Exception as exc:  # zarr raises several kinds for a non-store directory
            raise FormatError(f"{self.path} is not a galspec cutout store ({exc})") from exc
        raw = dict(self._root.attrs)
        self.attrs = StoreAttrs.from_dict(raw, f"cutout store {self.path}")
        self._every_chunk_written = raw["format_version"] >= 2  # version 1 skipped chunks of zeros
        self._cache: dict[str, np.ndarray] = {}
        # the images' own layout, read without zarr's per-chunk work (a store being appended to
        # changes its shape: it reads through zarr)
        self._fast = None if _writable or not self._every_chunk_written else layout_of(self.path / IMAGES)
        if self._fast is not None:
            self._fast = replace(self._fast, n=min(self._fast.n, self.n_objects))
        self._id_set: set[int] | None = None  # built by the first append, for O(batch) id checks

    def _writable_root(self):
        self._fast = None  # an append changes the images' shape
        if self._root.read_only:
            self._root = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        return self._root

    # -- attributes ------------------------------------------------------------------------
    @property
    def bands(self) -> tuple[str, ...]:
        return self.attrs.bands

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.attrs.image_shape

    @property
    def pixel_scale(self) -> float:
        return self.attrs.pixel_scale

    @property
    def survey(self) -> str:
        return self.attrs.survey

    @property
    def partition_order(self) -> int:
        return self.attrs.partition_order

    @property
    def n_objects(self) -> int:
        return self.attrs.n_objects

    def __len__(self) -> int:
        return self.n_objects

    def __repr__(self) -> str:
        return (
            f"CutoutStore({str(self.path)!r}, n_objects={self.n_objects}, bands={''.join(self.bands)}, "
            f"image_shape={self.image_shape}, survey={self.survey!r})"
        )

    def _require_chunks(self, name: str, start: int, stop: int, what: str) -> None:
        """Refuse rows whose chunk files are gone: zarr would read them as the fill value (zeros)."""
        if not self._every_chunk_written or stop <= start:
            return
        arr = self._root[name]
        step = (arr.shards or arr.chunks)[0]
        tail = ["0"] * (arr.ndim - 1)
        for i in range(start // step, (stop - 1) // step + 1):
            f = self.path.joinpath(*name.split("/"), "c", str(i), *tail)
            if not f.is_file():
                lo, hi = max(start, i * step), min(stop, (i + 1) * step) - 1
                raise FormatError(f"cutout store {self.path}: {what} of rows {lo}..{hi} are missing on disk "
                                  f"({f.relative_to(self.path)} is gone); restore or rewrite the store")

    def _column(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._require_chunks(name, 0, self.n_objects, f"the {name!r} values")
            try:
                self._cache[name] = np.asarray(self._root[name][: self.n_objects])
            except Exception as exc:  # zarr and its codecs raise assorted errors for damaged chunks
                raise FormatError(f"cutout store {self.path}: array {name!r} cannot be read, damaged on disk "
                                  f"({type(exc).__name__}: {first_line(exc)})") from None
        return self._cache[name]

    @property
    def object_id(self) -> np.ndarray:
        return self._column(OBJECT_ID)

    @property
    def ra(self) -> np.ndarray:
        return self._column(RA)

    @property
    def dec(self) -> np.ndarray:
        return self._column(DEC)

    @property
    def healpix_29(self) -> np.ndarray:
        return self._column(HEALPIX)

    @property
    def mask(self) -> np.ndarray:
        return self._column(MASK)

    @property
    def flags(self) -> np.ndarray:
        return self._column(FLAGS)

    # -- partitions --------------------------------------------------------------------------
    def _index_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.attrs.n_partition_rows
        for name in ("pixel", "start", "stop"):
            self._require_chunks(f"{PARTITIONS}/{name}", 0, n, "the partition index")
        g = self._root[PARTITIONS]
        return (np.asarray(g["pixel"][:n]), np.asarray(g["start"][:n]), np.asarray(g["stop"][:n]))

    def partitions(self, order: int | None = None) -> list[Partition]:
        """The sky partitions at ``order`` (default: the stored partition order), sorted by pixel.

        Orders up to the stored one come from the stored index; finer orders are computed from
        ``_healpix_29`` (each appended segment is sorted, so a pixel is a few row ranges).
        """
        order = self.partition_order if order is None else int(order)
        if order <= self.partition_order:
            pix, start, stop = self._index_rows()
            pix = pix >> (2 * (self.partition_order - order))
        else:
            pix, start, stop = ranges(pixel_at_order(self.healpix_29, order), 0)
        by_pixel: dict[int, list[tuple[int, int]]] = {}
        for p, a, b in zip(pix.tolist(), start.tolist(), stop.tolist(), strict=True):
            rs = by_pixel.setdefault(p, [])
            if rs and rs[-1][1] == a:
                rs[-1] = (rs[-1][0], b)
            else:
                rs.append((a, b))
        return [Partition(order, p, tuple(rs)) for p, rs in sorted(by_pixel.items())]

    # -- reading -----------------------------------------------------------------------------
    def read(self, rows: np.ndarray | slice, dtype: str | None = "float32",
             out: np.ndarray | None = None) -> Batch:
        """Read the given rows (a slice or sorted row indices); ``dtype=None`` keeps the stored
        dtype (half the bytes to copy to a GPU for a float16 store). A slice's images go into
        ``out`` (in the stored dtype) when given, e.g. a reused, page-locked buffer."""
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.n_objects)
            idx = np.arange(start, stop)
            if self._fast is not None:
                images = self._images(idx, lambda: read_rows(self._fast, start, max(start, stop), out))
            else:
                images = self._images(idx, lambda: _into(out, self._root[IMAGES][start:stop]))
        else:
            idx = np.asarray(rows, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_objects):
                raise InputError(f"rows out of range for {self.path} ({self.n_objects} objects)")
            images = self._images(idx, lambda: self._root[IMAGES].get_orthogonal_selection((idx,)))
        return Batch(
            rows=idx,
            object_id=self.object_id[idx],
            images=images if dtype is None else images.astype(dtype, copy=False),
            mask=self.mask[idx],
            flags=self.flags[idx],
            ra=self.ra[idx],
            dec=self.dec[idx],
            healpix_29=self.healpix_29[idx],
        )

    def _images(self, idx: np.ndarray, read) -> np.ndarray:
        if idx.size:
            self._require_chunks(IMAGES, int(idx.min()), int(idx.max()) + 1, "the cutouts")
        try:
            return np.asarray(read())
        except Exception as exc:  # zarr and its codecs raise assorted errors for damaged chunks
            raise FormatError(
                f"cutout store {self.path}: the cutouts of rows {idx.min()}..{idx.max()} (object_id "
                f"{self.object_id[idx.min()]}..{self.object_id[idx.max()]}) cannot be read, damaged on "
                f"disk ({type(exc).__name__}: {first_line(exc)}); restore or rewrite the store"
            ) from None

    def iter_batches(self, start: int = 0, stop: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                     dtype: str | None = "float32", prefetch: bool = False) -> Iterator[Batch]:
        """Yield consecutive batches of rows [start, stop); memory is bounded by ``batch_size``.

        With ``prefetch`` the next batch is read in a thread while the caller works on this one
        (decompression releases the GIL), so reading overlaps compute.
        """
        stop = self.n_objects if stop is None else min(stop, self.n_objects)
        yield from self.iter_ranges([(start, stop)], batch_size, dtype, prefetch)

    def iter_partition(self, partition: Partition, batch_size: int = DEFAULT_BATCH_SIZE,
                       dtype: str | None = "float32",
                       prefetch: bool = False) -> Iterator[Batch]:
        """Yield the batches of one sky partition (see ``iter_ranges``)."""
        yield from self.iter_ranges(partition.ranges, batch_size, dtype, prefetch)

    def iter_ranges(self, ranges: Iterable[tuple[int, int]], batch_size: int = DEFAULT_BATCH_SIZE,
                    dtype: str | None = "float32", prefetch: bool = False) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` rows (the last may be short) from the row ranges in
        turn (see ``iter_batches``, and ``batch_groups``)."""
        yield from self._read_all(batch_groups(ranges, batch_size), dtype, prefetch)

    def read_group(self, group: list[tuple[int, int]], dtype: str | None = "float32",
                   out: np.ndarray | None = None) -> Batch:
        """The rows of several slices as one batch (into ``out``, as ``read``)."""
        if len(group) == 1:
            a, b = group[0]
            return self.read(slice(a, b), dtype, None if out is None else out[: b - a])
        parts, at = [], 0
        for a, b in group:
            parts.append(self.read(slice(a, b), dtype, None if out is None else out[at:at + b - a]))
            at += b - a
        fields = {k: np.concatenate([getattr(b, k) for b in parts]) for k in vars(parts[0]) if k != "images"}
        in_out = out is not None and dtype is None
        return Batch(images=out[:at] if in_out else np.concatenate([b.images for b in parts]), **fields)

    def _read_all(self, groups: list[list[tuple[int, int]]], dtype: str | None,
                  prefetch: bool) -> Iterator[Batch]:
        if not prefetch or len(groups) < 2:
            for g in groups:
                yield self.read_group(g, dtype)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="galspec-read") as pool:
            future = pool.submit(self.read_group, groups[0], dtype)
            for nxt in groups[1:]:
                batch = future.result()
                future = pool.submit(self.read_group, nxt, dtype)
                yield batch
            yield future.result()

    def fingerprint(self) -> str:
        """A content hash of the store's identity: attributes, ids, positions and index.

        Cheap (no pixels read); changes whenever objects are added or the store is rebuilt.
        """
        h = hashlib.sha256(json.dumps(self.attrs.to_dict(), sort_keys=True).encode())
        for arr in (self.object_id, self.ra, self.dec, *self._index_rows()):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def batch_groups(ranges: Iterable[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int]]]:
    """The row ranges cut into batches of ``batch_size`` rows (the last may be short), each a list
    of slices: a batch may span ranges, so ranges smaller than a batch (small partitions) still
    make whole batches and are read ahead."""
    groups: list[list[tuple[int, int]]] = []
    group: list[tuple[int, int]] = []
    room = batch_size
    for a, b in ranges:
        while a < b:
            take = min(b - a, room)
            if group and group[-1][1] == a:
                group[-1] = (group[-1][0], a + take)
            else:
                group.append((a, a + take))
            a, room = a + take, room - take
            if room == 0:
                groups.append(group)
                group, room = [], batch_size
    if group:
        groups.append(group)
    return groups


def _into(out: np.ndarray | None, images: np.ndarray) -> np.ndarray:
    if out is None:
        return images
    out[...] = images
    return out


def ranges(pix: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if pix.size == 0:
        return pix, pix, pix
    cut = np.flatnonzero(pix[1:] != pix[:-1]) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [pix.size]])
    return pix[starts], starts + offset, stops + offset
