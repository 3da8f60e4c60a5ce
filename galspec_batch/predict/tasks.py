"""How the pending partitions become tasks of bounded size.

The store's sky partitions stay the unit of output and resume, but not of scheduling: a partition
larger than a task is cut into slices that run as separate tasks (their rows are assembled and
written as the one partition once all are done), and neighbouring small partitions are packed
into one task, whose reader then reads ahead across them. Without this the largest partition
starts last and runs alone while the other workers idle, and a partition smaller than one batch
is read in the calling thread with nothing to overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from galspec_batch import defaults as D
from galspec_batch.store import Partition


@dataclass(frozen=True)
class Piece:
    """Rows of one partition that one task predicts: all of them, or slice ``index`` of ``of``."""

    partition: Partition
    ranges: tuple[tuple[int, int], ...]
    index: int = 0
    of: int = 1

    @property
    def n(self) -> int:
        return sum(b - a for a, b in self.ranges)

    @property
    def whole(self) -> bool:
        return self.of == 1


@dataclass(frozen=True)
class Task:
    """The pieces one task predicts, in store order (so that reads are contiguous)."""

    pieces: tuple[Piece, ...]

    @property
    def n(self) -> int:
        return sum(p.n for p in self.pieces)

    @property
    def partitions(self) -> list[Partition]:
        return [p.partition for p in self.pieces]


def task_rows(total: int, workers: int, batch_size: int, max_rows: int = D.MAX_TASK_ROWS) -> int:
    """Rows per task: enough tasks for ``TASKS_PER_WORKER`` per worker, at most ``max_rows``,
    a whole number of batches."""
    share = math.ceil(total / max(1, workers * D.TASKS_PER_WORKER))
    rows = max(batch_size, min(max_rows, share))
    return math.ceil(rows / batch_size) * batch_size


def slice_ranges(ranges: tuple[tuple[int, int], ...], start: int, stop: int) -> tuple[tuple[int, int], ...]:
    """The store rows of positions [start, stop) of a partition whose rows are ``ranges``."""
    out, seen = [], 0
    for a, b in ranges:
        lo, hi = max(a, a + start - seen), min(b, a + stop - seen)
        if lo < hi:
            out.append((lo, hi))
        seen += b - a
    return tuple(out)


def plan_tasks(partitions: list[Partition], max_rows: int | None) -> list[Task]:
    """Tasks of at most ``max_rows`` rows (a partition cut into equal slices when it is larger),
    largest first; ``max_rows=None``: one task per partition."""
    if max_rows is None:
        tasks = [Task((Piece(p, p.ranges),)) for p in partitions]
        return sorted(tasks, key=lambda t: -t.n)
    tasks: list[Task] = []
    pack: list[Piece] = []
    for p in sorted(partitions, key=lambda p: p.ranges[0][0] if p.ranges else 0):
        if p.n > max_rows:
            k = math.ceil(p.n / max_rows)
            cuts = [round(i * p.n / k) for i in range(k + 1)]
            tasks += [Task((Piece(p, slice_ranges(p.ranges, cuts[i], cuts[i + 1]), i, k),)) for i in range(k)]
            continue
        if pack and sum(q.n for q in pack) + p.n > max_rows:
            tasks.append(Task(tuple(pack)))
            pack = []
        pack.append(Piece(p, p.ranges))
    if pack:
        tasks.append(Task(tuple(pack)))
    return sorted(tasks, key=lambda t: -t.n)
