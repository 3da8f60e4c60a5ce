"""Behaviour of the crash-safe writes in ``galspec_batch.atomic``: targets appear only on success,
failures and kills leave the old target as it was, and leftovers are cleaned by the next write."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from galspec_batch.atomic import TMP_MARK, atomic_path, file_sha256, read_json, remove_stale_tmp, write_json
from galspec_batch.errors import FormatError, GalspecError, MissingFileError

REPO_ROOT = Path(__file__).resolve().parents[1]


class Boom(Exception):
    pass


def siblings(path: Path) -> list[str]:
    """The names in ``path``'s directory, sorted."""
    return sorted(p.name for p in path.parent.iterdir())


def tmp_leftovers(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}{TMP_MARK}")]


def tree(path: Path) -> dict[str, bytes]:
    """A directory's files (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- atomic_path: files


def test_file_appears_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp != target
        assert tmp.parent == target.parent
        assert tmp.name.startswith(f"out.txt{TMP_MARK}")
        tmp.write_text("hello")
        assert not target.exists()  # not visible while the block runs
    assert target.read_text() == "hello"
    assert siblings(target) == ["out.txt"]


def test_creates_missing_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_exception_leaves_absent_target_absent(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise Boom
    assert not target.exists()
    assert siblings(target) == []


def test_exception_leaves_old_file_byte_identical(tmp_path):
    target = tmp_path / "out.bin"
    old = bytes(range(256)) * 10
    target.write_bytes(old)
    with pytest.raises(Boom), atomic_path(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new and partial")
        raise Boom
    assert target.read_bytes() == old
    assert siblings(target) == ["out.bin"]


def test_existing_target_without_overwrite_raises_before_block_runs(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    ran = []
    with pytest.raises(FileExistsError, match="out.txt"), atomic_path(target):
        ran.append(True)
    assert ran == []
    assert target.read_text() == "old"
    assert siblings(target) == ["out.txt"]


def test_target_created_during_block_without_overwrite_is_kept(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(FileExistsError), atomic_path(target) as tmp:
        tmp.write_text("mine")
        target.write_text("someone else's")  # a concurrent writer won the race
    assert target.read_text() == "someone else's"
    assert siblings(target) == ["out.txt"]


def test_overwrite_replaces_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # the old file stays readable meanwhile
    assert target.read_text() == "new"
    assert siblings(target) == ["out.txt"]


# ---------------------------------------------------------------- atomic_path: directories


def test_directory_appears_only_on_success(tmp_path):
    target = tmp_path / "outdir"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        assert not target.exists()
    assert tree(target) == {"a.txt": b"a", "sub/b.txt": b"b"}
    assert siblings(target) == ["outdir"]


def test_exception_leaves_old_directory_untouched_and_removes_tmp(tmp_path):
    target = tmp_path / "outdir"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Boom), atomic_path(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        (tmp / "sub").mkdir()
        raise Boom
    assert tree(target) == {"old.txt": b"old"}
    assert siblings(target) == ["outdir"]


def test_overwrite_replaces_directory_whole(tmp_path):
    target = tmp_path / "outdir"
    target.mkdir()
    (target / "old_only.txt").write_text("old")
    (target / "shared.txt").write_text("old")
    with atomic_path(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "shared.txt").write_text("new")
        (tmp / "new_only.txt").write_text("new")
    assert tree(target) == {"shared.txt": b"new", "new_only.txt": b"new"}  # no old_only.txt
    assert siblings(target) == ["outdir"]


def test_existing_directory_without_overwrite_raises_before_block_runs(tmp_path):
    target = tmp_path / "outdir"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    ran = []
    with pytest.raises(FileExistsError, match="outdir"), atomic_path(target):
        ran.append(True)
    assert ran == []
    assert tree(target) == {"keep.txt": b"keep"}


# ---------------------------------------------------------------- stale temporaries


def test_next_write_removes_stale_tmp_file_and_dir(tmp_path):
    target = tmp_path / "out.txt"
    (tmp_path / f"out.txt{TMP_MARK}dead0001").write_text("stale")
    stale_dir = tmp_path / f"out.txt{TMP_MARK}dead0002"
    stale_dir.mkdir()
    (stale_dir / "f").write_text("stale")
    (tmp_path / "other.txt.tmp-dead0003").write_text("someone else's")  # not ours: kept
    with atomic_path(target) as tmp:
        assert tmp_leftovers(target) == []  # removed before the block
        tmp.write_text("fresh")
    assert siblings(target) == ["other.txt.tmp-dead0003", "out.txt"]


def test_remove_stale_tmp_with_missing_parent_is_a_no_op(tmp_path):
    remove_stale_tmp(tmp_path / "missing" / "out.txt")
    assert not (tmp_path / "missing").exists()


def test_stale_tmp_removed_for_name_with_glob_characters(tmp_path):
    target = tmp_path / "run[1].txt"
    (tmp_path / f"run[1].txt{TMP_MARK}dead0001").write_text("stale")
    with atomic_path(target) as tmp:
        tmp.write_text("fresh")
    assert siblings(target) == ["run[1].txt"]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from galspec_batch.atomic import atomic_path

    target, kind = Path(sys.argv[1]), sys.argv[2]
    with atomic_path(target, overwrite=True) as tmp:
        if kind == "dir":
            tmp.mkdir()
            (tmp / "part.txt").write_text("partial")
        else:
            tmp.write_text("partial")
        print("ready", flush=True)
        time.sleep(60)
    """
)


def kill_mid_write(target: Path, kind: str) -> None:
    """Run an atomic write of ``target`` in a subprocess and SIGKILL it inside the block."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), kind],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_sigkill_mid_write_leaves_absent_target_absent(tmp_path, kind):
    target = tmp_path / "out"
    kill_mid_write(target, kind)
    assert not target.exists()
    assert len(tmp_leftovers(target)) == 1
    assert siblings(target) == [p.name for p in tmp_leftovers(target)]

    with atomic_path(target) as tmp:
        tmp.write_text("fresh")
    assert target.read_text() == "fresh"
    assert siblings(target) == ["out"]  # the killed run's leftover is gone


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_sigkill_mid_write_leaves_old_target_untouched(tmp_path, kind):
    target = tmp_path / "out"
    if kind == "dir":
        target.mkdir()
        (target / "old.txt").write_bytes(b"old dir content")
        before = tree(target)
    else:
        target.write_bytes(b"old file content\x00\xff")
        before = target.read_bytes()
    kill_mid_write(target, kind)
    after = tree(target) if kind == "dir" else target.read_bytes()
    assert after == before
    leftovers = tmp_leftovers(target)
    assert len(leftovers) == 1
    assert sorted(siblings(target)) == sorted(["out", leftovers[0].name])

    remove_stale_tmp(target)
    assert siblings(target) == ["out"]
    assert (tree(target) if kind == "dir" else target.read_bytes()) == before


# ---------------------------------------------------------------- JSON and hashes


def test_write_json_sorts_keys_and_is_byte_identical_on_rerun(tmp_path):
    target = tmp_path / "doc.json"
    doc = {"zeta": 1, "alpha": {"y": [3, 2, 1], "b": None}, "mid": "ü"}
    write_json(target, doc)
    first = target.read_bytes()
    assert list(json.loads(first)) == ["alpha", "mid", "zeta"]
    assert list(json.loads(first)["alpha"]) == ["b", "y"]
    assert first.endswith(b"\n")
    assert read_json(target) == doc

    write_json(target, dict(reversed(list(doc.items()))))  # same content, other insertion order
    assert target.read_bytes() == first
    assert siblings(target) == ["doc.json"]


def test_write_json_overwrites_existing_file(tmp_path):
    target = tmp_path / "doc.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}


@pytest.mark.parametrize("text", ["{not json", "", '{"a": 1,}', "[1, 2"])
def test_read_json_on_invalid_json_raises_one_line_format_error(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(FormatError) as info:
        read_json(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "\n" not in msg
    assert isinstance(info.value, GalspecError)


def test_read_json_on_binary_file_raises_format_error(tmp_path):
    path = tmp_path / "image.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(FormatError) as info:
        read_json(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_read_json_on_missing_file_raises_missing_file_error(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(MissingFileError) as info:
        read_json(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_read_json_refuses_oversized_file(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"a": "x" * 100}))
    with pytest.raises(FormatError, match="big.json"):
        read_json(path, max_bytes=50)
    assert read_json(path, max_bytes=1000) == {"a": "x" * 100}


def test_file_sha256_matches_hashlib_across_blocks(tmp_path):
    path = tmp_path / "big.bin"
    data = os.urandom(1 << 16) * 70 + b"tail"  # about 4.4 MiB: more than one 4 MiB block
    assert len(data) > 1 << 22
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_file_sha256_of_empty_and_exact_block_files(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()
    block = tmp_path / "block"
    data = b"\x01" * (1 << 22)
    block.write_bytes(data)
    assert file_sha256(block) == hashlib.sha256(data).hexdigest()


def test_write_json_writes_undefined_numbers_as_null(tmp_path):
    import json

    import numpy as np

    from galspec_batch.atomic import write_json

    write_json(tmp_path / "a.json", {"x": float("nan"), "y": [np.float32(1.5), np.inf], "n": np.int64(3)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"n": 3, "x": None, "y": [1.5, None]}
