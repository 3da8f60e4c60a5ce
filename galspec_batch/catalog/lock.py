"""One writer per catalog: an advisory lock on ``_state/lock`` (``flock``), released by the
kernel when its holder exits, however it exits.

A coordinator (``galspec predict``, ``finalize``, the ``begin`` of ``galspec submit``) holds it
exclusively and writes who it is into the file; the array tasks of one SLURM submission hold it
shared, so that they run side by side while any coordinator is refused. A second run is refused
at once, with a one-line message naming the holder. The lock is as good as the file system's
``flock``: local disks, NFSv4 and Lustre mounted with ``-o flock`` honour it across hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from galspec_batch.catalog import paths
from galspec_batch.errors import BusyError


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        doc = json.loads(os.read(fd, 4096) or b"{}")
        return (f"{doc['command']} (pid {doc['pid']} on {doc['host']}, since {doc['since']})"
                if doc else "the array tasks of a SLURM submission")
    except (OSError, ValueError, KeyError):
        return "another process"


@contextlib.contextmanager
def catalog_lock(catalog: str | Path, *, shared: bool = False, command: str | None = None) -> Iterator[None]:
    """Hold the catalog's lock for the ``with`` block; BusyError at once if another run holds it."""
    lock = paths.lock_file(catalog)
    created = [d for d in (lock.parent.parent, lock.parent) if not d.exists()]  # to remove if unused
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"catalog {catalog} is being written by {_holder(fd)}; wait for it to end "
                            "(or stop it), then rerun") from None
        if not shared:
            doc = {"command": command or " ".join(["galspec", *sys.argv[1:2]]), "pid": os.getpid(),
                   "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(doc).encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)
                if not paths.run_state_file(catalog).exists():  # never began: leave no trace
                    lock.unlink(missing_ok=True)
                    for d in reversed(created):
                        with contextlib.suppress(OSError):
                            d.rmdir()
    finally:
        os.close(fd)
