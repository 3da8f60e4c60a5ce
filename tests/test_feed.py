"""The feed's pipelining, on the CPU: a stand-in asynchronous device stage whose copy reads the host
buffer late (as a DMA copy does) and whose compute runs on its own thread (as a CUDA stream does)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import make_tiny_store

from galspec_batch.predict import feed
from galspec_batch.predict.feed import BufferPool, read_ahead, run_feed
from galspec_batch.store import open_store
from galspec_batch.store.reader import batch_groups


class SlowDevice:
    """Upload: a copy on its own 'stream' that reads the host buffer after ``copy_s``; launch: the
    compute on another, waiting for the copy, taking ``compute_s``; fetch: the results back."""

    pin = False

    def __init__(self, copy_s: float, compute_s: float, asynchronous: bool = True):
        self.copy_s, self.compute_s, self.asynchronous = copy_s, compute_s, asynchronous
        self.copy = ThreadPoolExecutor(1)
        self.compute = ThreadPoolExecutor(1)
        self.buffers: set[int] = set()

    def upload(self, images: torch.Tensor):
        self.buffers.add(images.data_ptr())

        def copy():
            time.sleep(self.copy_s)
            return images.clone()  # reads the host buffer now, as a DMA copy would

        f = self.copy.submit(copy)
        return f if self.asynchronous else f.result()

    def launch(self, x, object_id: np.ndarray):
        def compute():
            time.sleep(self.compute_s)
            data = x.result() if hasattr(x, "result") else x
            return {"sum": data.float().nan_to_num().sum(dim=(1, 2, 3)).numpy(), "id": object_id.copy()}

        f = self.compute.submit(compute)
        return f if self.asynchronous else f.result()

    def fetch(self, launched):
        return launched.result() if hasattr(launched, "result") else launched


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(make_tiny_store(tmp_path_factory.mktemp("feed") / "s.zarr", n=240))


def _truth(store) -> dict[int, float]:
    images = store.read(slice(0, store.n_objects), dtype=None).images
    sums = torch.from_numpy(images).float().nan_to_num().sum(dim=(1, 2, 3)).numpy()
    return dict(zip(store.object_id.tolist(), sums.tolist(), strict=True))


def test_async_copy_overlaps_compute_and_no_buffer_is_reused_too_early(store):
    groups = batch_groups([(0, store.n_objects)], 20)  # 12 batches
    truth = _truth(store)
    timings = {}
    for asynchronous in (False, True):
        device = SlowDevice(copy_s=0.03, compute_s=0.03, asynchronous=asynchronous)
        t0 = time.perf_counter()
        seen = {}
        for batch, out, n_read in run_feed(device, store, groups):
            assert n_read == len(batch.rows) == len(out["id"]) and np.array_equal(out["id"], batch.object_id)
            seen.update(zip(out["id"].tolist(), out["sum"].tolist(), strict=True))
        timings[asynchronous] = time.perf_counter() - t0
        assert seen == truth  # every copy read its own batch: no buffer was refilled before that
        # the same few buffers, reused: one read ahead on a synchronous device, more on an asynchronous
        assert len(device.buffers) == (feed.READ_AHEAD + 2 if asynchronous else 2)
    # 12 batches: in sequence about 12 x (copy + compute), pipelined about 12 x compute
    assert timings[True] < 0.75 * timings[False], timings


@pytest.mark.parametrize("read_ahead", [1, 2])
def test_no_buffer_is_refilled_before_its_slow_copy_read_it(store, monkeypatch, read_ahead):
    monkeypatch.setattr(feed, "READ_AHEAD", read_ahead)
    device = SlowDevice(copy_s=0.02, compute_s=0.0)
    seen = {}
    for _, out, _ in run_feed(device, store, batch_groups([(0, store.n_objects)], 16)):
        seen.update(zip(out["id"].tolist(), out["sum"].tolist(), strict=True))
    assert seen == _truth(store) and len(device.buffers) == read_ahead + 2


def test_reader_is_bounded_by_the_pool_and_stops_cleanly(store):
    groups = batch_groups([(0, store.n_objects)], 10)
    pool = BufferPool(3, (10, 5, *store.image_shape), np.dtype(store.attrs.dtype))
    stream = read_ahead(store, groups, pool)
    held = [next(stream) for _ in range(3)]  # the caller keeps every buffer: the reader must wait
    assert len({b.data_ptr() for _, b in held}) == 3
    threads = threading.active_count()
    stream.close()  # a consumer that stops early: the waiting read gives up, nothing hangs
    time.sleep(0.2)
    assert threading.active_count() <= threads
    for batch, buffer in held:  # each batch's images are a view of its buffer
        assert np.shares_memory(batch.images, buffer.numpy())
        np.testing.assert_array_equal(batch.images, store.read(batch.rows, dtype=None).images)


def test_a_region_cut_keeps_the_counts_of_rows_read(store):
    groups = batch_groups([(0, 100), (150, 240)], 32)
    device = SlowDevice(0.0, 0.0)
    keep_dec = lambda b: b.dec > 0  # noqa: E731
    got, read = [], 0
    for batch, out, n_read in run_feed(device, store, groups, keep_dec):
        read += n_read
        assert (batch.dec > 0).all() and len(batch.images) == 0
        got += out.get("id", np.zeros(0)).tolist()
    rows = np.r_[0:100, 150:240]
    assert read == len(rows) and sorted(got) == sorted(store.object_id[rows][store.dec[rows] > 0].tolist())


def test_feeds_one_after_another_reuse_the_process_pool_and_overlapping_ones_do_not_share(store):
    groups = batch_groups([(0, store.n_objects)], 32)
    small = batch_groups([(0, 40)], 16)  # fewer rows a batch: the kept pool's bigger buffers serve
    runs = []
    for g in (groups, groups, small):
        device = SlowDevice(0.0, 0.0, asynchronous=False)
        ids = [i for _, out, _ in run_feed(device, store, g) for i in out["id"].tolist()]
        runs.append((device.buffers, ids))
    assert runs[0][0] == runs[1][0] and runs[2][0] <= runs[0][0] and len(runs[0][0]) == 2
    assert runs[0][1] == runs[1][1] == store.object_id.tolist()
    assert runs[2][1] == store.object_id[:40].tolist()

    # a second feed while the first still holds the pool gets its own buffers; both read right
    a_dev, b_dev = SlowDevice(0.0, 0.0, asynchronous=False), SlowDevice(0.0, 0.0, asynchronous=False)
    a, b = run_feed(a_dev, store, groups), run_feed(b_dev, store, groups)
    sums = {}
    for (_, out_a, _), (_, out_b, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(out_a["sum"], out_b["sum"])
        sums.update(zip(out_a["id"].tolist(), out_a["sum"].tolist(), strict=True))
    assert not a_dev.buffers & b_dev.buffers and sums == _truth(store)
    assert not any(p.in_use for p in feed._KEPT)


def test_an_in_process_run_lets_the_kept_buffers_go(tmp_path):
    from conftest import make_tiny_checkpoint

    from galspec_batch.options import PredictOptions
    from galspec_batch.predict import predict_catalog

    store = make_tiny_store(tmp_path / "s.zarr", n=60)
    ckpt = make_tiny_checkpoint(tmp_path / "ck")
    predict_catalog(store, ckpt, tmp_path / "c", PredictOptions(batch_size=16), cluster="none",
                    progress=False)
    assert feed._KEPT == []


def test_freed_heap_is_handed_back_at_most_once_an_interval():
    from galspec_batch.predict.worker import _libc, trim_freed_memory

    def _resident() -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    if _libc() is None:
        pytest.skip("not glibc: there is no malloc_trim to call")
    assert trim_freed_memory(interval=0)
    held = [np.ones(4096) for _ in range(40_000)]  # 32 KiB blocks: the heap, not mmap; 1.3 GB
    grown = _resident()
    del held[::2]  # freed between blocks still held, so glibc keeps it for reuse
    kept = _resident()
    assert not trim_freed_memory(interval=3600)  # trimmed within the hour: nothing done
    assert trim_freed_memory(interval=0)
    assert _resident() < kept - (512 << 20), (grown >> 20, kept >> 20, _resident() >> 20)
