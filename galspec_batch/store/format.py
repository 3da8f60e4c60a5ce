"""The cutout store's format: its on-disk names, its attributes (:class:`StoreAttrs`) and the
layout of a new store.

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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from galspec_batch import defaults as D
from galspec_batch.columns import DEC, HEALPIX, OBJECT_ID, RA
from galspec_batch.formats import VersionedFormat, check_float, check_int, check_str, require

FORMAT_NAME = "galspec-cutout-store"
FORMAT_VERSION = 2  # 2: every chunk carries a crc32c checksum
DEFAULT_BANDS = ("g", "r", "i", "z", "y")
DTYPES = ("float16", "float32")
NANOMAGGY_ZERO_POINT = 22.5  # AB magnitude of one nanomaggy

IMAGES, MASK, FLAGS = "images", "mask", "flags"
PARTITIONS = "partitions"
PER_OBJECT = (MASK, FLAGS, OBJECT_ID, RA, DEC, HEALPIX)
PER_OBJECT_CHUNK = 65536
# zarr leaves out a chunk of fill values unless told; a store must hold every chunk, so that a
# missing chunk file is damage, never "all fill value" (a runtime setting: every writer sets it)
WRITE_EVERY_CHUNK = {"array.write_empty_chunks": True}


@dataclass(frozen=True)
class StoreAttrs(VersionedFormat):
    """The store's attributes (``zarr.json``); ``n_objects`` and ``n_partition_rows`` are the
    commit point of an append."""

    FORMAT: ClassVar[str] = FORMAT_NAME
    VERSION: ClassVar[int] = FORMAT_VERSION
    OLDER: ClassVar[tuple[int, ...]] = (1,)  # version 1 stores have no checksums; they read as before

    bands: tuple[str, ...]
    image_shape: tuple[int, int]
    pixel_scale: float
    survey: str
    flux_unit: str
    zero_points: dict[str, float | None]  # AB magnitude of one pixel unit; None: unknown
    dtype: str
    partition_order: int
    n_objects: int = 0
    n_partition_rows: int = 0
    content_hash: str = ""  # chained over every append (version 2; "" in version 1 stores)

    def validate(self) -> None:
        object.__setattr__(self, "bands", tuple(check_str("bands", b, 32) for b in self.bands))
        require(0 < len(self.bands) <= 64 and len(set(self.bands)) == len(self.bands),
                f"bands must be 1 to 64 distinct names, got {list(self.bands)}")
        require(len(self.image_shape) == 2, f"image_shape must be [H, W], got {list(self.image_shape)}")
        object.__setattr__(self, "image_shape", tuple(check_int("image_shape", v, 1, 4096)
                                                      for v in self.image_shape))
        check_float("pixel_scale", self.pixel_scale, 0.0, 3600.0, positive=True)
        check_str("survey", self.survey, 128)
        check_str("flux_unit", self.flux_unit, 128)
        require(isinstance(self.zero_points, dict) and set(self.zero_points) == set(self.bands),
                f"zero_points must give one value (or null: unknown) per band {list(self.bands)}")
        for band, zp in self.zero_points.items():
            if zp is not None:
                check_float(f"zero_points.{band}", zp, -100.0, 100.0)
        require(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        check_int("partition_order", self.partition_order, 0, 29)
        check_int("n_objects", self.n_objects, 0, 2**62)
        check_int("n_partition_rows", self.n_partition_rows, 0, 2**62)
        check_str("content_hash", self.content_hash, 64)

    @classmethod
    def _decode(cls, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "bands": tuple(body["bands"]), "image_shape": tuple(body["image_shape"])}

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "float16" else 4

    def committed(self, n_objects: int, n_partition_rows: int, content_hash: str) -> StoreAttrs:
        return replace(self, n_objects=n_objects, n_partition_rows=n_partition_rows,
                       content_hash=content_hash)


# the arrays' dimension names (zarr v3 ``dimension_names``), so that xarray opens the store
OBJECT_DIM, BAND_DIM = "object", "band"


# the images' codecs (``--codec``): Blosc settings by name, None for no compression; every chunk
# also carries a crc32c. The default is chosen by bench/bench_store.py (catalogs/store-format.md).
CODECS: dict[str, dict | None] = {
    "zstd": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"},
    "zstd-1": {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"},
    "lz4": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"},
    "lz4-bitshuffle": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
    "none": None,
}
assert tuple(CODECS) == D.STORE_CODECS, "defaults.STORE_CODECS names every codec"


def image_codecs(codec: str, itemsize: int) -> tuple:
    """The zarr codecs of the images for ``codec`` (a key of ``CODECS``), checksum last."""
    settings = CODECS[codec]
    return (*(() if settings is None else (BloscCodec(**settings, typesize=itemsize),)), Crc32cCodec())


CHUNK_BYTES = 8 << 20  # inner chunks of about 8 MiB: zarr's work per chunk, not the codec, bounds a read
SHARD_BYTES = 32 << 20
MAX_CHUNK = 256


def chunking(image_shape: tuple[int, int], bands: int, itemsize: int) -> tuple[int, int]:
    """Cutouts per chunk and per shard: chunks of about 8 MiB (16 cutouts at 224 px: zstd reads
    1.8x faster than one a chunk, bench/bench_store.py), shards of about 32 MiB."""
    per_object = bands * image_shape[0] * image_shape[1] * itemsize
    chunk = int(max(1, min(MAX_CHUNK, CHUNK_BYTES // per_object)))
    shard = chunk * max(1, SHARD_BYTES // (chunk * per_object))
    return chunk, shard


def init_group(path: Path, attrs: StoreAttrs, codec: str = D.STORE_CODEC) -> None:
    """Create the arrays of an empty store at ``path`` (the images compressed with ``codec``, a
    key of ``CODECS``) and write its attributes."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    h, w = attrs.image_shape
    nb = len(attrs.bands)
    chunk, shard = chunking((h, w), nb, attrs.itemsize)
    root.create_array(
        IMAGES,
        shape=(0, nb, h, w),
        dtype=attrs.dtype,
        chunks=(chunk, nb, h, w),
        shards=(shard, nb, h, w),
        compressors=image_codecs(codec, attrs.itemsize),
        fill_value=0,
        dimension_names=(OBJECT_DIM, BAND_DIM, "y", "x"),
    )
    for name, dt, extra in (
        (MASK, "bool", (nb,)),
        (FLAGS, "uint16", ()),
        (OBJECT_ID, "int64", ()),
        (RA, "float64", ()),
        (DEC, "float64", ()),
        (HEALPIX, "int64", ()),
    ):
        root.create_array(name, shape=(0, *extra), dtype=dt, chunks=(PER_OBJECT_CHUNK, *extra), fill_value=0,
                          compressors=(ZstdCodec(), Crc32cCodec()),
                          dimension_names=(OBJECT_DIM, BAND_DIM)[: 1 + len(extra)])
    parts = root.create_group(PARTITIONS)
    for name in ("pixel", "start", "stop"):
        parts.create_array(name, shape=(0,), dtype="int64", chunks=(PER_OBJECT_CHUNK,), fill_value=0,
                           compressors=(ZstdCodec(), Crc32cCodec()), dimension_names=("partition",))
    root.attrs.update(attrs.to_dict())
