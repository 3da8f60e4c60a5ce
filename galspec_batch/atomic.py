"""Atomic outputs: write beside the target under a temporary name, then rename into place.

A reader never sees a half-written file or directory; an interrupted run leaves only a
``.tmp-*`` sibling that the next run removes. A file is replaced by one ``rename``; a directory
cannot be, so the old one is first moved to an ``.old-*`` sibling, which the next run puts back
if the process died before the new one was in place.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"
MAX_JSON_BYTES = 64 << 20  # every JSON document galspec writes is far smaller


def tmp_sibling(path: str | os.PathLike, mark: str = TMP_MARK) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}{mark}{uuid.uuid4().hex[:8]}")


def _remove(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def remove_stale_tmp(path: str | os.PathLike) -> None:
    """Clear up after interrupted writes of ``path``: remove half-written ``.tmp-*`` siblings, and
    put back an old directory (``.old-*``) whose replacement never arrived."""
    path = Path(path)
    if not path.parent.exists():
        return
    name = glob.escape(path.name)
    for p in path.parent.glob(f"{name}{TMP_MARK}*"):
        _remove(p)
    for p in sorted(path.parent.glob(f"{name}{OLD_MARK}*")):
        if path.exists():
            _remove(p)
        else:
            os.replace(p, path)


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """FileExistsError before any work when ``path`` exists and may not be replaced."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write a file or directory into; on success rename it to ``path``.

    On error the temporary output is removed and ``path`` is left as it was.
    """
    path = Path(path)
    refuse_existing(path, overwrite)  # before the work, not after it
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = tmp_sibling(path)
    try:
        yield tmp
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
        if path.is_dir() and not path.is_symlink():
            old = tmp_sibling(path, OLD_MARK)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)  # one rename: readers see the old file or the new one
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            _remove(tmp)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> object:
    """A JSON document; a missing, oversized or unparsable file is a one-line error naming it."""
    from galspec_batch.errors import FormatError, MissingFileError

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingFileError(f"{path} does not exist") from None
    if size > max_bytes:
        raise FormatError(f"{path} is {size:,} bytes; a galspec JSON document is under {max_bytes:,}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path} is not valid JSON: {exc}") from None


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write a small JSON document atomically (keys sorted, so reruns give identical files). A
    number that is not finite (an undefined statistic) is written as null: JSON has no NaN."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=1, sort_keys=True, allow_nan=False) + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with every float that is not finite (numpy's too) replaced by None."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
