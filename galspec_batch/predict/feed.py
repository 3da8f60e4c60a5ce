"""The feed: store -> reused host buffers -> device -> results, each stage overlapping the next.

- A reader thread reads the next batches (``READ_AHEAD`` on a GPU, one on the CPU) into buffers from a pool
  of host buffers reused across batches and across the tasks a process runs (:func:`buffer_pool`):
  page-locked on a GPU (so the copy to the device runs asynchronously), plain memory on the CPU
  (no fresh allocation, and page faults, per batch; no second pool beside a freed one per task).
- The device stage (:class:`Stage`, the predictor) uploads a batch (on a GPU: on its own CUDA
  stream, which the compute stream waits for) and launches the network and the MC head on it
  without waiting; only the output columns come back when its results are fetched.
- On an asynchronous device one batch stays launched while the next is uploaded and launched,
  so the copy of batch k+1 runs while batch k computes; a buffer goes back to the pool once its
  batch's results are fetched (by then its copy is long done).

The logic is tested on the CPU with a stand-in slow asynchronous stage (``tests/test_feed.py``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

import numpy as np
import torch

from galspec_batch.store import Batch, CutoutStore

READ_AHEAD = 2  # batches read ahead of the one being uploaded, on a GPU (on the CPU, which computes
# a batch far slower than it reads one, 1: at 224 px a batch of 256 is 128 MB)


class Stage(Protocol):
    """The device side of the feed (the predictor is one)."""

    asynchronous: bool  # launch returns before the work is done (a GPU)
    pin: bool  # host buffers should be page-locked

    def upload(self, images: torch.Tensor) -> torch.Tensor: ...
    def launch(self, x: torch.Tensor, object_id: np.ndarray) -> object: ...
    def fetch(self, launched: object) -> dict[str, np.ndarray]: ...


class PoolClosed(Exception):
    """The feed stopped while a read waited for a buffer."""


class BufferPool:
    """``n`` host buffers of ``shape`` (one batch of images), handed out and given back; ``take``
    waits while all are in use, which bounds memory whatever the reader's speed."""

    def __init__(self, n: int, shape: tuple[int, ...], dtype: np.dtype, pin: bool = False) -> None:
        dt = torch.from_numpy(np.zeros(0, dtype)).dtype
        self.buffers = [torch.empty(shape, dtype=dt, pin_memory=pin) for _ in range(n)]
        self.in_use = False  # a feed holds it (see buffer_pool)
        self.reset()

    def reset(self) -> None:
        """Every buffer free again, the pool open: only once no reader can still hold one."""
        self._free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        self.closed = False
        for b in self.buffers:
            self._free.put(b)

    def take(self) -> torch.Tensor:
        while True:
            try:
                return self._free.get(timeout=0.05)
            except queue.Empty:
                if self.closed:  # the feed stopped: a reader waiting here gives up
                    raise PoolClosed from None

    def give(self, buffer: torch.Tensor) -> None:
        self._free.put(buffer)

    def fits(self, n: int, shape: tuple[int, ...], dtype: np.dtype, pin: bool) -> bool:
        """Whether this pool serves ``n`` buffers of ``shape`` (its buffers may hold more rows)."""
        b = self.buffers[0]
        return (len(self.buffers) == n and tuple(b.shape[1:]) == tuple(shape[1:]) and b.shape[0] >= shape[0]
                and b.dtype == torch.from_numpy(np.zeros(0, dtype)).dtype and b.is_pinned() == pin)


_KEPT: list[BufferPool] = []  # the process's pool, kept from one feed to the next
_KEPT_LOCK = threading.Lock()


@contextlib.contextmanager
def buffer_pool(n: int, shape: tuple[int, ...], dtype: np.dtype, pin: bool = False) -> Iterator[BufferPool]:
    """A pool for one feed: the one the process keeps when it fits and no other feed holds it,
    else a new one (kept in its place when that is free). A new pool per task made a process at
    224 px hold two pools of a few hundred MB at times, and pinning one on a GPU is slow."""
    with _KEPT_LOCK:
        kept = _KEPT[0] if _KEPT else None
        if kept is not None and not kept.in_use and kept.fits(n, shape, dtype, pin):
            pool = kept
            pool.reset()
        else:
            if kept is not None and not kept.in_use:
                _KEPT.clear()  # another shape: let the old buffers go before the new ones are made
                del kept
            pool = BufferPool(n, shape, dtype, pin)
            if not _KEPT:
                _KEPT.append(pool)
        pool.in_use = True
    try:
        yield pool
    finally:
        pool.in_use = False


def release_kept_pool() -> None:
    """Let the kept buffers go (an in-process run ends; a Dask worker keeps them for its next task)."""
    with _KEPT_LOCK:
        if _KEPT and not _KEPT[0].in_use:
            _KEPT.clear()


def read_ahead(store: CutoutStore, groups: list[list[tuple[int, int]]], pool: BufferPool,
               ahead: int = READ_AHEAD) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Each batch of ``groups`` read into a buffer of ``pool`` (its images a view of it) by one
    thread, ``ahead`` batches ahead; the caller gives each buffer back when done with it."""

    def read(group: list[tuple[int, int]]) -> tuple[Batch, torch.Tensor]:
        buffer = pool.take()
        try:
            return store.read_group(group, None, buffer.numpy()), buffer
        except BaseException:
            pool.give(buffer)
            raise

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="galspec-read") as reader:
        pending: deque[Future] = deque(reader.submit(read, g) for g in groups[:ahead])
        nxt = len(pending)
        try:
            while pending:
                batch, buffer = pending.popleft().result()
                if nxt < len(groups):
                    pending.append(reader.submit(read, groups[nxt]))
                    nxt += 1
                yield batch, buffer
        finally:  # a consumer that stopped early: no read is left waiting for a buffer
            pool.closed = True
            for f in pending:
                f.cancel()


def run_feed(stage: Stage, store: CutoutStore, groups: list[list[tuple[int, int]]],
             select: Callable[[Batch], np.ndarray] | None = None,
             ) -> Iterator[tuple[Batch, dict[str, np.ndarray], int]]:
    """Each batch of ``groups`` with its results and the number of rows read for it, in order.
    ``select(batch)`` may give a boolean mask of the rows to predict (a region cut); the batch
    is yielded cut to them, without its images (their buffer is already reading another batch)."""
    if not groups:
        return
    rows = max(sum(b - a for a, b in g) for g in groups)
    shape = (rows, len(store.bands), *store.image_shape)
    ahead = READ_AHEAD if stage.asynchronous else 1
    # buffers: those read ahead, the one being uploaded, and on a GPU the one still launched
    n_buffers = ahead + 1 + int(stage.asynchronous)
    with buffer_pool(n_buffers, shape, np.dtype(store.attrs.dtype), stage.pin) as pool:
        yield from _feed(stage, store, groups, select, pool, ahead)


def _feed(stage: Stage, store: CutoutStore, groups: list[list[tuple[int, int]]],
          select: Callable[[Batch], np.ndarray] | None, pool: BufferPool, ahead: int,
          ) -> Iterator[tuple[Batch, dict[str, np.ndarray], int]]:
    launched: deque[tuple[Batch, torch.Tensor, object, int]] = deque()
    stream = read_ahead(store, groups, pool, ahead)
    try:
        for batch, buffer in stream:
            n_read = len(batch.rows)
            keep = None if select is None else select(batch)
            if keep is not None and not keep.all():
                batch = Batch(**{k: v[keep] for k, v in vars(batch).items()})  # a copy: the buffer is free
                if len(batch.rows) == 0:
                    pool.give(buffer)
                    yield replace(batch, images=batch.images[:0]), {}, n_read
                    continue
                x = stage.upload(torch.from_numpy(batch.images))
            else:  # the pool's own tensor: torch then knows the copy reads pinned memory
                x = stage.upload(buffer[:n_read])
            launched.append((batch, buffer, stage.launch(x, batch.object_id), n_read))
            while len(launched) > int(stage.asynchronous):
                yield _fetch(stage, pool, *launched.popleft())
        while launched:
            yield _fetch(stage, pool, *launched.popleft())
    finally:
        stream.close()  # its reader thread is done with the buffers once this returns


def _fetch(stage: Stage, pool: BufferPool, batch: Batch, buffer: torch.Tensor, work: object,
           n_read: int) -> tuple[Batch, dict[str, np.ndarray], int]:
    out = stage.fetch(work)
    pool.give(buffer)  # its batch's results are back: its copy to the device is long done
    return replace(batch, images=batch.images[:0]), out, n_read
