"""The download manifest: ``manifest.jsonl`` in the folder the files land in, one JSON line for
each file downloaded and each answer worth keeping, appended the moment it arrives, so that a
rerun after any interruption asks the archive only for what it still lacks.

Every line has ``kind``, ``key`` (the request: the URL's path and query, without the root, so
a mirror serves the same keys) and ``time``:

* ``file``: ``path`` (relative to the folder), ``size``, ``sha256``: a file counts as had only
  while it is there with that size and sha256; otherwise it is fetched again;
* ``list``: ``files`` ({band: archive file name}): a PS1 file list;
* ``absent``: ``reason``: the archive does not have it (HTTP 404, an empty file list).

The last line of a key wins; a line that does not parse (a process killed mid-write) is skipped,
and a last line left without its newline is ended before the next run appends to the file.
Downloads land under ``.part-*`` names and are renamed into place before their line is written;
a run removes the parts an interrupted one left. One run at a time writes a folder (``flock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import threading
import time
from pathlib import Path, PurePosixPath

from galspec_batch.archive.http import PART_PREFIX, Cancelled, FileRecord
from galspec_batch.atomic import file_sha256
from galspec_batch.errors import BusyError

MANIFEST_NAME = "manifest.jsonl"
KINDS = ("file", "list", "absent")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Manifest:
    """The manifest of ``folder``, read at open and appended to by any thread; a context manager."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / MANIFEST_NAME
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise BusyError(f"{self.folder} is being downloaded into by another galspec download; "
                            "wait for it to end (or stop it), then rerun") from None
        self.entries = _read(self.path)
        self.appended = 0
        size = os.fstat(self._fd).st_size
        # a last line without its newline (a run killed mid-write, a full disk) is ended before the
        # next is written, else the two would be glued into one that does not parse
        self._torn = size > 0 and os.pread(self._fd, 1, size - 1) != b"\n"
        _remove_parts(self.folder)

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:  # a worker still running after an interruption cannot write past this
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
                os.close(self._fd)  # releases the lock
                self._fd = -1

    def n_files(self) -> int:
        """The files downloaded into the folder, by this run or an earlier one."""
        return sum(e["kind"] == "file" for e in self.entries.values())

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def has_file(self, key: str, path: Path) -> bool:
        """Whether ``key`` was downloaded to ``path`` and the file there still has its size and sha256."""
        entry = self.entries.get(key)
        if entry is None or entry["kind"] != "file" or entry["path"] != self._relative(path):
            return False
        try:
            if path.stat().st_size != entry["size"]:
                return False
        except OSError:
            return False
        return file_sha256(path) == entry["sha256"]

    def add_file(self, key: str, path: Path, record: FileRecord) -> None:
        self._append({"kind": "file", "key": key, "path": self._relative(path), "size": record.size,
                      "sha256": record.sha256})

    def add_list(self, key: str, files: dict[str, str]) -> None:
        self._append({"kind": "list", "key": key, "files": dict(files)})

    def add_absent(self, key: str, reason: str) -> None:
        self._append({"kind": "absent", "key": key, "reason": reason})

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def _append(self, entry: dict) -> None:
        entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise Cancelled
            data = b"\n" + line if self._torn else line
            self._torn = True  # until the whole line is down: an OSError may leave part of it
            _write_all(self._fd, data)
            self._torn = False
            self.entries[entry["key"]] = entry
            self.appended += 1


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (O_APPEND, under the lock: lines never interleave); os.write may write
    less (a full disk, a file-size limit) and says so only in its count, so the rest is written
    again until it goes or OSError says why not."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, "no byte of a manifest line could be written")
        view = view[written:]


def _read(path: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if _valid(entry):
                entries[entry["key"]] = entry
    return entries


def _valid(entry: object) -> bool:
    """A manifest line of a known kind with fields of the right types; a file path inside the folder."""
    if not (isinstance(entry, dict) and entry.get("kind") in KINDS and isinstance(entry.get("key"), str)):
        return False
    kind = entry["kind"]
    if kind == "file":
        p = entry.get("path")
        return (isinstance(p, str) and bool(p) and not PurePosixPath(p).is_absolute()
                and ".." not in PurePosixPath(p).parts and isinstance(entry.get("size"), int)
                and isinstance(entry.get("sha256"), str) and bool(_SHA256.fullmatch(entry["sha256"])))
    if kind == "list":
        files = entry.get("files")
        return isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in files.items())
    return isinstance(entry.get("reason"), str)


def _remove_parts(folder: Path) -> None:
    """Remove the half-downloaded files an interrupted run left (``.part-*``, at any depth)."""
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name.startswith(PART_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))
