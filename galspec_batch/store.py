"""The cutout store: a versioned Zarr v3 group of multi-band cutouts sorted by sky position.

Layout (documented in ``catalogs/store-format.md``)::

    store.zarr/
      zarr.json              attributes: format, format_version, bands, pixel_scale, survey, ...
      images                 [N, bands, H, W] float16 (or float32), sharded, blosc-zstd + shuffle
      mask                   [N, bands] bool, True where the band was observed
      flags                  [N] uint16, QualityFlag bits
      object_id              [N] int64, unique
      ra, dec                [N] float64 degrees
      _healpix_29            [N] int64, NESTED order 29
      partitions/pixel       [P] int64  pixel at ``partition_order``
      partitions/start, stop [P] int64  half-open row range

Every append sorts its objects by ``_healpix_29`` and adds row ranges to the partition index; a
fresh store whose objects come sorted has exactly one range per partition. The committed object
count and partition-row count live in the attributes and are written last, so an interrupted
append leaves the store as it was before it.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from galspec_batch.atomic import atomic_path
from galspec_batch.errors import FormatError, InputError, MissingFileError
from galspec_batch.sky import SPATIAL_INDEX_COLUMN, healpix_29, pixel_at_order

FORMAT_NAME = "galspec-cutout-store"
FORMAT_VERSION = 1
DEFAULT_BANDS = ("g", "r", "i", "z", "y")

IMAGES, MASK, FLAGS, OBJECT_ID, RA, DEC = "images", "mask", "flags", "object_id", "ra", "dec"
HEALPIX = SPATIAL_INDEX_COLUMN
PARTITIONS = "partitions"
_PER_OBJECT = (MASK, FLAGS, OBJECT_ID, RA, DEC, HEALPIX)


class QualityFlag(enum.IntFlag):
    """Per-object quality bits (uint16), shared by the store and the catalog's ``quality_flags``."""

    NAN_PIXELS = 1  # some pixels are NaN (kept in the store, zero for the CNN)
    MISSING_BAND = 2  # a band was not observed (zero-filled, mask False)
    LOW_COVERAGE = 4  # reserved: too few valid pixels for a trustworthy prediction
    OUT_OF_DISTRIBUTION = 8  # set by `galspec anomalies` on flagged objects


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


def _chunking(image_shape: tuple[int, int], bands: int, itemsize: int) -> tuple[int, int]:
    """Cutouts per chunk and per shard: chunks of about 256 KiB, shards of about 32 MiB."""
    per_object = bands * image_shape[0] * image_shape[1] * itemsize
    chunk = int(max(1, min(64, (256 * 1024) // per_object)))
    shard = chunk * max(1, (32 * 1024 * 1024) // (chunk * per_object))
    return chunk, shard


def create_store(
    path: str | Path,
    *,
    bands: tuple[str, ...] | list[str] = DEFAULT_BANDS,
    image_shape: tuple[int, int] = (64, 64),
    pixel_scale: float = 0.25,
    survey: str = "mock",
    flux_unit: str = "nanomaggy",
    zero_points: dict[str, float] | None = None,
    dtype: str = "float16",
    partition_order: int = 6,
    overwrite: bool = False,
) -> StoreWriter:
    """Start a new store; use as a context manager and ``append`` batches of objects.

    The store appears at ``path`` only when the ``with`` block ends without error.
    """
    if dtype not in ("float16", "float32"):
        raise InputError(f"store dtype must be float16 or float32, got {dtype!r}")
    bands = tuple(bands)
    if len(set(bands)) != len(bands):
        raise InputError(f"duplicate band names {bands}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (use overwrite to replace it)")
    attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bands": list(bands),
        "image_shape": [int(image_shape[0]), int(image_shape[1])],
        "pixel_scale": float(pixel_scale),
        "survey": survey,
        "flux_unit": flux_unit,
        "zero_points": {b: float((zero_points or {}).get(b, 22.5)) for b in bands},
        "dtype": dtype,
        "partition_order": int(partition_order),
        "n_objects": 0,
        "n_partition_rows": 0,
    }
    return StoreWriter(path, attrs, overwrite)


class StoreWriter:
    """Writes a new store into a temporary directory and renames it into place on success."""

    def __init__(self, path: Path, attrs: dict, overwrite: bool):
        self.path = path
        self._attrs = attrs
        self._overwrite = overwrite
        self._ctx = None
        self.store: CutoutStore | None = None

    def __enter__(self) -> StoreWriter:
        self._ctx = atomic_path(self.path, overwrite=self._overwrite)
        tmp = self._ctx.__enter__()
        _init_group(tmp, self._attrs)
        self.store = CutoutStore(tmp, _writable=True)
        return self

    def append(self, object_id, ra, dec, images, mask=None, flags=None) -> None:
        assert self.store is not None, "use StoreWriter as a context manager"
        self.store.append(object_id, ra, dec, images, mask, flags)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.store = None
        self._ctx.__exit__(exc_type, exc, tb)


def _init_group(path: Path, attrs: dict) -> None:
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    h, w = attrs["image_shape"]
    nb = len(attrs["bands"])
    itemsize = 2 if attrs["dtype"] == "float16" else 4
    chunk, shard = _chunking((h, w), nb, itemsize)
    root.create_array(
        IMAGES,
        shape=(0, nb, h, w),
        dtype=attrs["dtype"],
        chunks=(chunk, nb, h, w),
        shards=(shard, nb, h, w),
        compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=itemsize),
        fill_value=0,
    )
    per_obj_chunk = 65536
    for name, dt, extra in (
        (MASK, "bool", (nb,)),
        (FLAGS, "uint16", ()),
        (OBJECT_ID, "int64", ()),
        (RA, "float64", ()),
        (DEC, "float64", ()),
        (HEALPIX, "int64", ()),
    ):
        root.create_array(name, shape=(0, *extra), dtype=dt, chunks=(per_obj_chunk, *extra), fill_value=0)
    parts = root.create_group(PARTITIONS)
    for name in ("pixel", "start", "stop"):
        parts.create_array(name, shape=(0,), dtype="int64", chunks=(65536,), fill_value=0)
    root.attrs.update(attrs)


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
        attrs = dict(self._root.attrs)
        if attrs.get("format") != FORMAT_NAME:
            raise FormatError(f"{self.path} is not a galspec cutout store (format={attrs.get('format')!r})")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise FormatError(
                f"{self.path} has store format_version {attrs.get('format_version')!r}; "
                f"this galspec-batch reads version {FORMAT_VERSION} only"
            )
        self.attrs = attrs
        self._cache: dict[str, np.ndarray] = {}
        self._id_set: set[int] | None = None  # built by the first append, for O(batch) id checks

    # -- attributes ------------------------------------------------------------------------
    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.attrs["bands"])

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.attrs["image_shape"])

    @property
    def pixel_scale(self) -> float:
        return float(self.attrs["pixel_scale"])

    @property
    def survey(self) -> str:
        return self.attrs["survey"]

    @property
    def partition_order(self) -> int:
        return int(self.attrs["partition_order"])

    @property
    def n_objects(self) -> int:
        return int(self.attrs["n_objects"])

    def __len__(self) -> int:
        return self.n_objects

    def __repr__(self) -> str:
        return (
            f"CutoutStore({str(self.path)!r}, n_objects={self.n_objects}, bands={''.join(self.bands)}, "
            f"image_shape={self.image_shape}, survey={self.survey!r})"
        )

    def _column(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = np.asarray(self._root[name][: self.n_objects])
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
        n = int(self.attrs["n_partition_rows"])
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
            pix, start, stop = _ranges(pixel_at_order(self.healpix_29, order), 0)
        by_pixel: dict[int, list[tuple[int, int]]] = {}
        for p, a, b in zip(pix.tolist(), start.tolist(), stop.tolist(), strict=True):
            rs = by_pixel.setdefault(p, [])
            if rs and rs[-1][1] == a:
                rs[-1] = (rs[-1][0], b)
            else:
                rs.append((a, b))
        return [Partition(order, p, tuple(rs)) for p, rs in sorted(by_pixel.items())]

    # -- reading -----------------------------------------------------------------------------
    def read(self, rows: np.ndarray | slice, dtype: str | None = "float32") -> Batch:
        """Read the given rows (a slice or sorted row indices); ``dtype=None`` keeps the stored
        dtype (half the bytes to copy to a GPU for a float16 store)."""
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.n_objects)
            idx = np.arange(start, stop)
            images = np.asarray(self._root[IMAGES][start:stop])
        else:
            idx = np.asarray(rows, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_objects):
                raise InputError(f"rows out of range for {self.path} ({self.n_objects} objects)")
            images = np.asarray(self._root[IMAGES].get_orthogonal_selection((idx,)))
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

    def iter_batches(self, start: int = 0, stop: int | None = None, batch_size: int = 256,
                     dtype: str | None = "float32", prefetch: bool = False) -> Iterator[Batch]:
        """Yield consecutive batches of rows [start, stop); memory is bounded by ``batch_size``.

        With ``prefetch`` the next batch is read in a thread while the caller works on this one
        (Zarr decompression releases the GIL), so reading overlaps compute.
        """
        stop = self.n_objects if stop is None else min(stop, self.n_objects)
        yield from self._read_all([(a, min(a + batch_size, stop)) for a in range(start, stop, batch_size)],
                                  dtype, prefetch)

    def iter_partition(self, partition: Partition, batch_size: int = 256, dtype: str | None = "float32",
                       prefetch: bool = False) -> Iterator[Batch]:
        """Yield the batches of one sky partition (see ``iter_batches``)."""
        bounds = [(a, min(a + batch_size, stop)) for start, stop in partition.ranges
                  for a in range(start, stop, batch_size)]
        yield from self._read_all(bounds, dtype, prefetch)

    def _read_all(self, bounds: list[tuple[int, int]], dtype: str | None, prefetch: bool) -> Iterator[Batch]:
        if not prefetch or len(bounds) < 2:
            for a, b in bounds:
                yield self.read(slice(a, b), dtype)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="galspec-read") as pool:
            future = pool.submit(self.read, slice(*bounds[0]), dtype)
            for nxt in bounds[1:]:
                batch = future.result()
                future = pool.submit(self.read, slice(*nxt), dtype)
                yield batch
            yield future.result()

    # -- writing -----------------------------------------------------------------------------
    def append(self, object_id, ra, dec, images, mask=None, flags=None) -> None:
        """Add objects in place without rewriting the store; they are sorted by ``_healpix_29``.

        The new rows become visible only when the object count is committed at the end.
        """
        if self._root.read_only:
            self._root = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        nb = len(self.bands)
        images = np.asarray(images)
        object_id = np.asarray(object_id, dtype=np.int64).reshape(-1)
        n = object_id.size
        if images.shape != (n, nb, *self.image_shape):
            raise InputError(
                f"images for {self.path} must have shape (N, {nb}, {self.image_shape[0]}, "
                f"{self.image_shape[1]}) with N={n}, got {images.shape}"
            )
        ra = np.asarray(ra, dtype=np.float64).reshape(-1)
        dec = np.asarray(dec, dtype=np.float64).reshape(-1)
        if ra.shape != (n,) or dec.shape != (n,):
            raise InputError(f"ra/dec must have {n} values, got {ra.shape} and {dec.shape}")
        if not (np.isfinite(ra).all() and np.isfinite(dec).all()) or np.any(np.abs(dec) > 90):
            bad = object_id[~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90))][:5]
            raise InputError(f"objects {bad.tolist()} have invalid ra/dec")
        mask = np.ones((n, nb), bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (n, nb):
            raise InputError(f"mask must have shape ({n}, {nb}), got {mask.shape}")
        if self._id_set is None:
            self._id_set = set(self.object_id.tolist())
        _check_unique(object_id, self._id_set, self.path)
        if flags is None:
            flags = np.zeros(n, np.uint16)
        flags = np.asarray(flags, dtype=np.uint16).copy()
        flags[np.isnan(images).any(axis=(2, 3)).any(axis=1)] |= np.uint16(QualityFlag.NAN_PIXELS)
        flags[~mask.all(axis=1)] |= np.uint16(QualityFlag.MISSING_BAND)

        hp = healpix_29(ra, dec)
        order = np.argsort(hp, kind="stable")
        n0 = self.n_objects
        new = {
            IMAGES: images[order].astype(self.attrs["dtype"], copy=False),
            MASK: mask[order],
            FLAGS: flags[order],
            OBJECT_ID: object_id[order],
            RA: ra[order],
            DEC: dec[order],
            HEALPIX: hp[order],
        }
        for name, values in new.items():
            arr = self._root[name]
            arr.resize((n0 + n, *arr.shape[1:]))
            arr[n0 : n0 + n] = values
        pix, start, stop = _ranges(pixel_at_order(hp[order], self.partition_order), n0)
        p0 = int(self.attrs["n_partition_rows"])
        g = self._root[PARTITIONS]
        for name, values in (("pixel", pix), ("start", start), ("stop", stop)):
            g[name].resize((p0 + len(values),))
            g[name][p0:] = values
        # commit point: the counts are written last and in one metadata write
        self._root.attrs.update({"n_objects": n0 + n, "n_partition_rows": p0 + len(pix)})
        self.attrs = dict(self._root.attrs)
        self._id_set.update(object_id.tolist())
        for name in list(self._cache):
            self._cache[name] = np.concatenate([self._cache[name], new[name]])

    def fingerprint(self) -> str:
        """A content hash of the store's identity: attributes, ids, positions and index.

        Cheap (no pixels read); changes whenever objects are added or the store is rebuilt.
        """
        h = hashlib.sha256(json.dumps(self.attrs, sort_keys=True).encode())
        for arr in (self.object_id, self.ra, self.dec, *self._index_rows()):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def _ranges(pix: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if pix.size == 0:
        return pix, pix, pix
    cut = np.flatnonzero(pix[1:] != pix[:-1]) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [pix.size]])
    return pix[starts], starts + offset, stops + offset


def _check_unique(new_ids: np.ndarray, existing: set[int], path: Path) -> None:
    uniq, counts = np.unique(new_ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise InputError(f"duplicate object ids {dup} in the objects added to {path}")
    clash = [i for i in uniq.tolist() if i in existing]
    if clash:
        raise InputError(f"object ids {clash[:5]} are already in {path}")
