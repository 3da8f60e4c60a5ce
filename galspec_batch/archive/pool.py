"""Running a download: worker threads take objects from a queue and fetch each object's files; the
calling thread collects what they return, one progress step per object, and what it all cost.

The workers are daemon threads: on Ctrl-C or SIGTERM the calling thread stops them (they drop
their request at the next chance) and leaves at once, instead of waiting for a stalled socket;
whatever they had finished is already in the manifest, so the rerun goes on from there. An
archive that asks the run to wait too long (:class:`ArchiveBusy`) stops every worker the same way.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from galspec_batch.archive.http import ArchiveBusy, Cancelled
from galspec_batch.errors import GalspecError
from galspec_batch.ingest.quarantine import Quarantined

T = TypeVar("T")
R = TypeVar("R")
_JOIN_SECONDS = 2.0  # how long an interrupted run waits for its workers to let go


def run_pool(items: Sequence[T], work: Callable[[T], R], concurrency: int, stop: threading.Event,
             advance: Callable[[int], None]) -> list[tuple[T, R | GalspecError]]:
    """``work`` on every item, ``concurrency`` at a time; an item whose work raised a GalspecError
    comes back with it (to quarantine); ArchiveBusy or any other error stops every worker and is
    raised here."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    done: queue.SimpleQueue = queue.SimpleQueue()
    for item in items:
        todo.put(item)

    def worker() -> None:
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((item, work(item), None))
            except Cancelled:
                return
            except ArchiveBusy as exc:  # not this item's fault: no worker may ask again
                stop.set()
                done.put((item, None, exc))
                return
            except GalspecError as exc:
                done.put((item, exc, None))
            except BaseException as exc:  # a bug or a full disk: stop the run, say so in this thread
                stop.set()
                done.put((item, None, exc))
                return

    threads = [threading.Thread(target=worker, name=f"galspec-download-{k}", daemon=True)
               for k in range(min(concurrency, len(items)))]
    for t in threads:
        t.start()
    results: list[tuple[T, R | GalspecError]] = []
    try:
        while len(results) < len(items):
            try:
                item, result, crash = done.get(timeout=0.2)  # a timeout, so that signals get through
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and done.empty():
                    break
                continue
            if crash is not None:
                raise crash
            results.append((item, result))
            advance(1)
    finally:
        stop.set()
        deadline = time.monotonic() + _JOIN_SECONDS
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    return results


@dataclass
class DownloadReport:
    """What a download did: objects asked for and complete, files downloaded and found already
    here, the requests, retries, bytes and seconds it took, and the objects it quarantined."""

    output: Path
    source: str
    unit: str
    n_asked: int
    n_complete: int
    downloaded: int
    reused: int
    requests: int
    retries: int
    nbytes: int
    seconds: float
    quarantined: list[Quarantined] = field(default_factory=list)
    quarantine_file: Path | None = None
    missing_bands: int = 0
    ingested: int | None = None
    next_step: str | None = None

    def summary(self) -> str:
        text = (f"{self.source}: {self.n_complete} of {self.n_asked} {self.unit} complete "
                f"({self.downloaded} files downloaded, {self.reused} already here); {self.requests} "
                f"requests, {self.retries} retries, {_size(self.nbytes)} in {self.seconds:.1f} s")
        if self.ingested is not None:
            text += f"; ingested {self.ingested} into {self.output}"
        if self.missing_bands:
            text += f" ({self.missing_bands} lack a band, masked)"
        if self.quarantined:
            text += f"; quarantined {len(self.quarantined)} (listed in {self.quarantine_file})"
        if self.next_step:
            text += f"; next: {self.next_step}"
        return text


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
