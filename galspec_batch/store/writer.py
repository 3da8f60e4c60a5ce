"""Writing a cutout store: a new store appears atomically (``create_store``); ``append_objects``
adds rows to a new or an existing store in place, sorted by sky position, and commits them by
writing the counts last."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path, refuse_existing
from galspec_batch.columns import DEC, HEALPIX, OBJECT_ID, RA, QualityFlag
from galspec_batch.errors import InputError, UsageError
from galspec_batch.sky import healpix_29, pixel_at_order
from galspec_batch.store.format import (
    CODECS,
    DEFAULT_BANDS,
    FLAGS,
    IMAGES,
    MASK,
    NANOMAGGY_ZERO_POINT,
    PARTITIONS,
    WRITE_EVERY_CHUNK,
    StoreAttrs,
    init_group,
)
from galspec_batch.store.reader import CutoutStore, ranges


def create_store(
    path: str | Path,
    *,
    bands: tuple[str, ...] | list[str] = DEFAULT_BANDS,
    image_shape: tuple[int, int] = (64, 64),
    pixel_scale: float = 0.25,
    survey: str = "mock",
    flux_unit: str = "nanomaggy",
    zero_points: dict[str, float | None] | None = None,
    dtype: str = "float16",
    partition_order: int = 6,
    codec: str = D.STORE_CODEC,
    overwrite: bool = False,
) -> StoreWriter:
    """Start a new store; use as a context manager and ``append`` batches of objects.

    The store appears at ``path`` only when the ``with`` block ends without error. A band's zero
    point defaults to 22.5 for nanomaggies and to unknown for other units. ``codec`` compresses
    the images (``store.format.CODECS``).
    """
    if codec not in CODECS:
        raise UsageError(f"unknown --codec {codec!r}; expected one of {', '.join(CODECS)}")
    bands = tuple(bands)
    path = Path(path)
    refuse_existing(path, overwrite)
    try:
        attrs = StoreAttrs(
            bands=bands, image_shape=(int(image_shape[0]), int(image_shape[1])),
            pixel_scale=float(pixel_scale),
            survey=survey, flux_unit=flux_unit,
            zero_points={b: _zero_point(zero_points, b, flux_unit) for b in bands}, dtype=dtype,
            partition_order=int(partition_order),
        )
    except ValueError as exc:
        raise InputError(f"cutout store {path}: {exc}") from None
    return StoreWriter(path, attrs, overwrite, codec)


def _zero_point(given: dict[str, float | None] | None, band: str, flux_unit: str) -> float | None:
    """The band's AB zero point: given, else 22.5 for nanomaggies (their definition), else unknown."""
    if given is not None and given.get(band) is not None:
        return float(given[band])
    return NANOMAGGY_ZERO_POINT if flux_unit == "nanomaggy" else None


class StoreWriter:
    """Writes a new store into a temporary directory and renames it into place on success."""

    def __init__(self, path: Path, attrs: StoreAttrs, overwrite: bool, codec: str = D.STORE_CODEC):
        self.path = path
        self._attrs = attrs
        self._codec = codec
        self._overwrite = overwrite
        self._ctx = None
        self.store: CutoutStore | None = None

    def __enter__(self) -> StoreWriter:
        self._ctx = atomic_path(self.path, overwrite=self._overwrite)
        tmp = self._ctx.__enter__()
        init_group(tmp, self._attrs, self._codec)
        self.store = CutoutStore(tmp, _writable=True)
        return self

    def append(self, object_id, ra, dec, images, mask=None, flags=None) -> None:
        assert self.store is not None, "use StoreWriter as a context manager"
        append_objects(self.store, object_id, ra, dec, images, mask, flags)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.store = None
        self._ctx.__exit__(exc_type, exc, tb)


def append_objects(store: CutoutStore, object_id, ra, dec, images, mask=None, flags=None) -> None:
    """Add objects in place without rewriting the store; they are sorted by ``_healpix_29``.

    The new rows become visible only when the object count is committed at the end.
    """
    root = store._writable_root()
    nb = len(store.bands)
    images = np.asarray(images)
    object_id = np.asarray(object_id, dtype=np.int64).reshape(-1)
    n = object_id.size
    if images.shape != (n, nb, *store.image_shape):
        raise InputError(
            f"images for {store.path} must have shape (N, {nb}, {store.image_shape[0]}, "
            f"{store.image_shape[1]}) with N={n}, got {images.shape}"
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
    if store._id_set is None:
        store._id_set = set(store.object_id.tolist())
    _check_unique(object_id, store._id_set, store.path)
    flags = np.zeros(n, np.uint16) if flags is None else np.asarray(flags, dtype=np.uint16).copy()
    images, mask, flags = image_flags(images, mask, flags, store.attrs)

    hp = healpix_29(ra, dec)
    order = np.argsort(hp, kind="stable")
    n0 = store.n_objects
    new = {
        IMAGES: images[order],
        MASK: mask[order],
        FLAGS: flags[order],
        OBJECT_ID: object_id[order],
        RA: ra[order],
        DEC: dec[order],
        HEALPIX: hp[order],
    }
    pix, start, stop = ranges(pixel_at_order(hp[order], store.partition_order), n0)
    p0 = store.attrs.n_partition_rows
    with zarr.config.set(WRITE_EVERY_CHUNK):
        for name, values in new.items():
            arr = root[name]
            arr.resize((n0 + n, *arr.shape[1:]))
            arr[n0 : n0 + n] = values
        g = root[PARTITIONS]
        for name, values in (("pixel", pix), ("start", start), ("stop", stop)):
            g[name].resize((p0 + len(values),))
            g[name][p0:] = values
    # commit point: the counts are written last and in one metadata write
    digest = content_hash(store.attrs.content_hash, new)
    root.attrs.update({"n_objects": n0 + n, "n_partition_rows": p0 + len(pix), "content_hash": digest})
    store.attrs = store.attrs.committed(n0 + n, p0 + len(pix), digest)
    store._id_set.update(object_id.tolist())
    for name in list(store._cache):
        store._cache[name] = np.concatenate([store._cache[name], new[name]])


def image_flags(images: np.ndarray, mask: np.ndarray, flags: np.ndarray, attrs: StoreAttrs
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels as the store will hold them, and the quality bits they earn there.

    The flags describe the stored pixels (after the cast to the store's dtype, so a float16 store's
    underflow to zero is seen). A band that is all NaN is not observed (mask False, MISSING_BAND).
    NaN and inf pixels are kept and flagged (NAN_PIXELS, INF_PIXELS); an observed band of one value
    everywhere is CONSTANT_BAND; a pixel larger in size than AB magnitude 0 (10**(0.4 * zero point)
    in the store's units; no galaxy pixel comes near) is EXTREME_PIXELS, and so is a value that a
    float16 store cannot hold, which is clipped to +-65504 rather than turned into inf.
    """
    images = np.asarray(images)
    finite = np.isfinite(images)
    flags = flags.copy()
    if attrs.dtype == "float16":
        top = float(np.finfo(np.float16).max)
        clipped = (finite & (np.abs(images) > top)).any(axis=(1, 2, 3))
        flags[clipped] |= np.uint16(QualityFlag.EXTREME_PIXELS)
        images = np.where(finite, np.clip(images, -top, top), images).astype(np.float16)
    else:
        images = images.astype(attrs.dtype, copy=False)
    finite = np.isfinite(images)
    nan_band = np.isnan(images).all(axis=(2, 3))
    mask = mask & ~nan_band
    flags[~mask.all(axis=1)] |= np.uint16(QualityFlag.MISSING_BAND)
    flags[np.isnan(images).any(axis=(1, 2, 3))] |= np.uint16(QualityFlag.NAN_PIXELS)
    flags[np.isinf(images).any(axis=(1, 2, 3))] |= np.uint16(QualityFlag.INF_PIXELS)
    with np.errstate(invalid="ignore"):
        hi = np.where(finite, images, -np.inf).max(axis=(2, 3)).astype(np.float64)
        lo = np.where(finite, images, np.inf).min(axis=(2, 3)).astype(np.float64)
    flags[(mask & (hi == lo)).any(axis=1)] |= np.uint16(QualityFlag.CONSTANT_BAND)
    zps = np.array([np.nan if attrs.zero_points[b] is None else attrs.zero_points[b] for b in attrs.bands])
    limit = np.where(np.isfinite(zps), 10 ** (0.4 * np.nan_to_num(zps)), np.inf)[None, :]
    size = np.maximum(np.abs(np.where(np.isfinite(hi), hi, 0)), np.abs(np.where(np.isfinite(lo), lo, 0)))
    flags[(size > limit).any(axis=1)] |= np.uint16(QualityFlag.EXTREME_PIXELS)
    return images, mask, flags


def content_hash(previous: str, arrays: dict[str, np.ndarray]) -> str:
    """The store's running content hash: ``previous`` chained with every array of an append, so
    that the fingerprint changes whenever any pixel, flag or mask written through galspec does."""
    h = hashlib.blake2b(previous.encode(), digest_size=16)
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def _check_unique(new_ids: np.ndarray, existing: set[int], path: Path) -> None:
    uniq, counts = np.unique(new_ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise InputError(f"duplicate object ids {dup} in the objects added to {path}")
    clash = [i for i in uniq.tolist() if i in existing]
    if clash:
        raise InputError(f"object ids {clash[:5]} are already in {path}")
