"""One progress display for every long step: a rich bar with count, rate and time left, on stderr.

It shows only when stderr is a terminal (a batch job's log gets no bar) and never with
``enabled=False`` (the commands' ``--quiet``); every command prints its own one-line summary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Bars for one or more tasks, and log lines printed above them::

        with Progress(enabled) as progress:
            advance = progress.task("predict", total=n, unit="galaxies")
            advance(k)
            progress.log("epoch 1/10: ...")
    """

    def __init__(self, enabled: bool = True) -> None:
        self._bar = None
        if enabled:
            from rich.console import Console

            console = Console(stderr=True)
            if console.is_terminal:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    TaskProgressColumn,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )
                from rich.progress import Progress as RichProgress

                self._bar = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"), TaskProgressColumn(show_speed=True),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                )  # fmt: skip

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def task(self, description: str, total: int | None, unit: str = "") -> Callable[[int], None]:
        """Add a bar; returns ``advance(n)``."""
        if self._bar is None:
            return lambda n: None
        task = self._bar.add_task(description, total=total, unit=unit)
        return lambda n: self._bar.advance(task, n)

    def log(self, message: str) -> None:
        """A line above the bars (shown only with them)."""
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False)


@contextlib.contextmanager
def progress_bar(total: int, description: str, unit: str = "", enabled: bool = True
                 ) -> Iterator[Callable[[int], None]]:
    """One bar: yields ``advance(n)``."""
    with Progress(enabled) as progress:
        yield progress.task(description, total, unit)


def track(items: Iterable[T], total: int, description: str, enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` with a bar of one step each."""
    with progress_bar(total, description, enabled=enabled) as advance:
        for item in items:
            yield item
            advance(1)
