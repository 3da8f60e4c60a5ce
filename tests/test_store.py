import json
import tracemalloc

import numpy as np
import pytest
import zarr

from galspec_batch.columns import QualityFlag
from galspec_batch.errors import FormatError, InputError, MissingFileError
from galspec_batch.sky import healpix_29, pixel_at_order
from galspec_batch.store import FORMAT_VERSION, append_objects, create_store, open_store


def _objects(n, seed=0, size=16, first_id=0):
    rng = np.random.default_rng(seed)
    ra = rng.uniform(150, 154, n)
    dec = rng.uniform(0, 4, n)
    images = rng.normal(size=(n, 5, size, size)).astype(np.float32)
    return np.arange(first_id, first_id + n), ra, dec, images


@pytest.fixture
def store(tmp_path):
    ids, ra, dec, images = _objects(300)
    with create_store(tmp_path / "s.zarr", image_shape=(16, 16), dtype="float32") as w:
        w.append(ids, ra, dec, images)
    return open_store(tmp_path / "s.zarr"), (ids, ra, dec, images)


def test_round_trip_sorted_by_healpix(store):
    s, (ids, ra, dec, images) = store
    assert len(s) == 300 and s.bands == tuple("grizy") and s.image_shape == (16, 16)
    assert np.all(np.diff(s.healpix_29) >= 0)
    np.testing.assert_array_equal(s.healpix_29, healpix_29(s.ra, s.dec))
    batch = s.read(slice(0, 300))
    order = np.argsort(ids)
    back = np.argsort(batch.object_id)
    np.testing.assert_array_equal(batch.images[back], images[order])
    np.testing.assert_array_equal(batch.ra[back], ra[order])


def test_float16_default_keeps_values_to_half_precision(tmp_path):
    ids, ra, dec, images = _objects(20)
    with create_store(tmp_path / "h.zarr", image_shape=(16, 16)) as w:
        w.append(ids, ra, dec, images)
    s = open_store(tmp_path / "h.zarr")
    arr = zarr.open_group(str(tmp_path / "h.zarr"), mode="r")["images"]
    assert arr.dtype == np.float16 and arr.shards is not None
    b = s.read(slice(0, 20))
    ref = images[np.argsort(ids)][np.argsort(np.argsort(b.object_id))]
    np.testing.assert_allclose(b.images, ref, rtol=1e-3, atol=1e-3)
    assert b.images.dtype == np.float32


def test_each_partition_is_one_contiguous_range(store):
    s, _ = store
    parts = s.partitions()
    assert sum(p.n for p in parts) == 300
    assert all(len(p.ranges) == 1 for p in parts)
    for p in parts:
        rows = np.arange(*p.ranges[0])
        assert np.all(pixel_at_order(s.healpix_29[rows], s.partition_order) == p.pixel)
    # coarser and finer orders come from the same sorted index
    for order in (3, 9):
        ps = s.partitions(order)
        assert sum(p.n for p in ps) == 300
        for p in ps:
            rows = np.concatenate([np.arange(a, b) for a, b in p.ranges])
            assert np.all(pixel_at_order(s.healpix_29[rows], order) == p.pixel)


def test_append_adds_without_rewriting(store, tmp_path):
    s, _ = store
    images_file = next((tmp_path / "s.zarr" / "images" / "c").rglob("*")).stat().st_mtime_ns
    ids, ra, dec, images = _objects(50, seed=1, first_id=1000)
    append_objects(s, ids, ra, dec, images)
    s2 = open_store(tmp_path / "s.zarr")
    assert len(s2) == 350
    assert sum(p.n for p in s2.partitions()) == 350
    got = s2.read(np.flatnonzero(s2.object_id >= 1000))
    np.testing.assert_array_equal(got.images[np.argsort(got.object_id)], images)
    # the first shard is untouched: appends write only new rows
    assert next((tmp_path / "s.zarr" / "images" / "c").rglob("*")).stat().st_mtime_ns == images_file


def test_duplicate_ids_refused(store):
    s, (ids, ra, dec, images) = store
    with pytest.raises(InputError, match=r"already in .*s\.zarr"):
        append_objects(s, ids[:2], ra[:2], dec[:2], images[:2])
    with pytest.raises(InputError, match=r"duplicate object ids \[7000\]"):
        append_objects(s, [7000, 7000], ra[:2], dec[:2], images[:2])
    assert len(open_store(s.path)) == 300


def test_wrong_shape_refused(store):
    s, (ids, ra, dec, images) = store
    with pytest.raises(InputError, match=r"shape \(N, 5, 16, 16\)"):
        append_objects(s, [9000], ra[:1], dec[:1], images[:1, :4])


def test_flags_from_nan_and_mask(tmp_path):
    ids, ra, dec, images = _objects(4)
    images[1, 2, 3, 3] = np.nan
    mask = np.ones((4, 5), bool)
    mask[2, 4] = False
    with create_store(tmp_path / "f.zarr", image_shape=(16, 16)) as w:
        w.append(ids, ra, dec, images, mask)
    s = open_store(tmp_path / "f.zarr")
    flags = dict(zip(s.object_id.tolist(), s.flags.tolist(), strict=True))
    assert flags == {0: 0, 1: QualityFlag.NAN_PIXELS, 2: QualityFlag.MISSING_BAND, 3: 0}
    b = s.read(np.flatnonzero(s.object_id == 1))
    assert np.isnan(b.images).sum() == 1


def test_interrupted_write_leaves_nothing(tmp_path):
    ids, ra, dec, images = _objects(10)
    with pytest.raises(RuntimeError):
        with create_store(tmp_path / "x.zarr", image_shape=(16, 16)) as w:
            w.append(ids, ra, dec, images)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_uncommitted_append_is_invisible(store):
    s, _ = store
    # rows written past the committed count (a crash before the commit) are not seen
    root = zarr.open_group(str(s.path), mode="r+")
    root["images"].resize((310, 5, 16, 16))
    root["object_id"].resize((310,))
    s2 = open_store(s.path)
    assert len(s2) == 300 and len(s2.object_id) == 300
    ids, ra, dec, images = _objects(10, seed=3, first_id=5000)
    append_objects(s2, ids, ra, dec, images)
    assert len(open_store(s.path)) == 310


def test_unknown_version_refused(store):
    s, _ = store
    meta = s.path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["format_version"] = FORMAT_VERSION + 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=f"format_version {FORMAT_VERSION + 1}"):
        open_store(s.path)


def test_not_a_store(tmp_path):
    with pytest.raises(MissingFileError):
        open_store(tmp_path / "nope.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not a galspec cutout store"):
        open_store(tmp_path / "empty")


def test_reader_memory_is_bounded_by_batch_and_chunk(tmp_path):
    from galspec_batch.store.format import chunking

    n_obj = 8000
    ids, ra, dec, images = _objects(n_obj, size=32)
    with create_store(tmp_path / "m.zarr", image_shape=(32, 32)) as w:
        for k in range(0, n_obj, 2000):
            w.append(ids[k : k + 2000], ra[k : k + 2000], dec[k : k + 2000], images[k : k + 2000])
    del images
    s = open_store(tmp_path / "m.zarr")
    _ = s.object_id, s.mask, s.flags, s.ra, s.dec, s.healpix_29
    per_object = 5 * 32 * 32 * 4  # float32 as read
    store_bytes = n_obj * per_object
    chunk, _ = chunking((32, 32), 5, 2)
    tracemalloc.start()
    n = 0
    for b in s.iter_batches(batch_size=64):
        n += len(b.rows)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == n_obj
    # a few decoded inner chunks and a batch, whatever the store's size
    bound = 4 * chunk * per_object // 2 + 2 * 64 * per_object
    assert peak < bound < store_bytes / 4, f"peak {peak} bytes (bound {bound}) for a {store_bytes}-byte store"


def test_prefetch_reads_the_same_batches(store):
    s, _ = store
    part = max(s.partitions(3), key=lambda p: p.n)
    plain = list(s.iter_partition(part, batch_size=7))
    ahead = list(s.iter_partition(part, batch_size=7, prefetch=True))
    assert [len(b.rows) for b in plain] == [len(b.rows) for b in ahead]
    assert sum(len(b.rows) for b in plain) == part.n
    for a, b in zip(plain, ahead, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.object_id, b.object_id)
    assert s.read(slice(0, 3), dtype=None).images.dtype == np.float32  # this store is float32


def test_xarray_opens_the_store_with_named_dimensions(store):
    import xarray as xr

    s, (ids, ra, dec, images) = store
    ds = xr.open_zarr(s.path, consolidated=False)
    assert ds["images"].dims == ("object", "band", "y", "x") and ds["mask"].dims == ("object", "band")
    assert ds.sizes == {"object": 300, "band": 5, "y": 16, "x": 16}
    assert ds.attrs["bands"] == ["g", "r", "i", "z", "y"] and ds.attrs["n_objects"] == 300
    ds = ds.assign_coords(band=ds.attrs["bands"]).set_index(object="object_id")  # as the doc shows
    order = np.argsort(ids)
    got = ds["images"].sel(object=ids[order[:3]], band="r").values
    np.testing.assert_array_equal(got, images[order[:3], 1])
    # the plain zarr reader is unchanged
    assert zarr.open_group(str(s.path), mode="r")["images"].shape == (300, 5, 16, 16)


@pytest.mark.parametrize("codec", ["lz4", "none", "zstd"])
def test_every_codec_writes_a_store_that_reads_back_exactly(tmp_path, codec):
    from galspec_batch.errors import UsageError

    rng = np.random.default_rng(3)
    images = rng.normal(0, 1, (40, 5, 24, 24)).astype(np.float16)
    ids = np.arange(40)
    with create_store(tmp_path / "s.zarr", image_shape=(24, 24), codec=codec) as w:
        w.append(ids, rng.uniform(150, 151, 40), rng.uniform(2, 3, 40), images)
    s = open_store(tmp_path / "s.zarr")
    got = s.read(slice(0, 40), dtype=None)
    np.testing.assert_array_equal(got.images, images[got.object_id])  # rows sorted by position; id = index
    meta = json.loads((tmp_path / "s.zarr" / "images" / "zarr.json").read_text())
    inner = [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]]
    assert inner[-1] == "crc32c" and ("blosc" in inner) == (codec != "none")
    with pytest.raises(UsageError, match="unknown --codec 'zip'"):
        create_store(tmp_path / "t.zarr", codec="zip")


@pytest.mark.parametrize("codec", ["zstd", "lz4-bitshuffle", "none"])
def test_the_fast_reader_equals_zarr_on_every_range_and_refuses_damage(tmp_path, codec):
    from galspec_batch.store.fastread import ChunkError, layout_of, read_rows
    from galspec_batch.store.format import image_codecs

    rng = np.random.default_rng(5)
    data = rng.normal(0, 1, (50, 5, 8, 8)).astype(np.float16)
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, dtype="float16", chunks=(4, 5, 8, 8),
                            shards=(12, 5, 8, 8), compressors=image_codecs(codec, 2), fill_value=0,
                            config={"write_empty_chunks": True})
    arr[:] = data
    layout = layout_of(tmp_path / "a")
    assert layout is not None and (layout.shard, layout.chunk, layout.n) == (12, 4, 50)
    for start, stop in [(0, 50), (0, 1), (3, 5), (4, 8), (11, 13), (23, 49), (48, 50), (7, 7)]:
        np.testing.assert_array_equal(read_rows(layout, start, stop, threads=2), data[start:stop])
    # a flipped byte in the third shard's first chunk, then that shard gone
    shard = tmp_path / "a" / "c" / "2" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 1
    shard.write_bytes(bytes(raw))
    np.testing.assert_array_equal(read_rows(layout, 0, 24), data[:24])  # the others still read
    with pytest.raises(ChunkError, match="differ from their checksum") as info:
        read_rows(layout, 20, 30)
    assert info.value.rows == (24, 27)
    # cut short (its index moved to the new end, checksum intact): refused before any byte is mapped
    second = tmp_path / "a" / "c" / "1" / "0" / "0" / "0"
    good = second.read_bytes()
    index = good[-(16 * 3 + 4):]
    second.write_bytes(good[:len(good) // 2] + index)
    with pytest.raises(ChunkError, match="shorter than its index says") as info:
        read_rows(layout, 12, 13)
    assert info.value.rows == (12, 23)
    second.write_bytes(b"")
    with pytest.raises(ChunkError, match="cannot be read"):
        read_rows(layout, 12, 13)
    shard.unlink()
    with pytest.raises(ChunkError, match="cannot be read"):
        read_rows(layout, 20, 30)
    assert layout_of(tmp_path / "nothing") is None
