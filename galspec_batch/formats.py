"""Versioned formats as small frozen dataclasses that read, validate and write themselves.

Each document on disk carries ``format`` (its name) and ``format_version``. A subclass names both,
lists its fields (types and defaults), checks its values in ``validate`` and, where a field needs
more than JSON gives (tuples, nested formats), converts it in ``_decode``. Every failure is one
``FormatError`` that names the file (or store) and what was wrong::

    @dataclass(frozen=True)
    class Calibration(VersionedFormat):
        FORMAT: ClassVar[str] = "galspec-calibration"
        VERSION: ClassVar[int] = 2
        scale: tuple[float, ...]
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Self

from galspec_batch.atomic import read_json, write_json
from galspec_batch.errors import FormatError


@dataclasses.dataclass(frozen=True)
class VersionedFormat:
    """Base of every versioned document: ``from_dict``/``to_dict``, ``read``/``write``."""

    FORMAT: ClassVar[str]
    VERSION: ClassVar[int]
    MAX_BYTES: ClassVar[int] = 4 << 20  # a bigger file is refused before it is parsed
    OLDER: ClassVar[tuple[int, ...]] = ()  # earlier versions this code still reads

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field; called on every construction."""

    @classmethod
    def _decode(cls, body: dict[str, Any]) -> dict[str, Any]:
        """Turn JSON values into field values (override for tuples and nested formats)."""
        return body

    @classmethod
    def from_dict(cls, doc: object, source: str) -> Self:
        """The document ``doc`` read from ``source`` (a path or a name), checked."""
        if not isinstance(doc, dict):
            raise FormatError(f"{source} is not a {cls.FORMAT} document (not a JSON object)")
        if doc.get("format") != cls.FORMAT:
            raise FormatError(f"{source} has format {doc.get('format')!r}; expected {cls.FORMAT!r}")
        if doc.get("format_version") not in (cls.VERSION, *cls.OLDER):
            raise FormatError(
                f"{source} has {cls.FORMAT} format_version {doc.get('format_version')!r}; "
                f"this galspec-batch reads version {cls.VERSION}"
            )
        body = {k: v for k, v in doc.items() if k not in ("format", "format_version")}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - names)
        if unknown:
            raise FormatError(f"{source}: unknown key {unknown[0]!r} in a {cls.FORMAT} document")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in body]
        if missing:
            raise FormatError(f"{source}: {cls.FORMAT} document lacks {', '.join(missing)}")
        try:
            return cls(**cls._decode(body))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise FormatError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: format, format_version and every field."""
        body = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"format": self.FORMAT, "format_version": self.VERSION, **body}

    @classmethod
    def read(cls, path: str | os.PathLike) -> Self:
        """Read and check the document at ``path``."""
        return cls.from_dict(read_json(path, cls.MAX_BYTES), str(path))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the document atomically."""
        write_json(path, self.to_dict())
        return Path(path)


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# -- checks shared by the formats ------------------------------------------------------------------


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``."""
    if not condition:
        raise ValueError(message)


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; bool and non-integral numbers are refused."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    require(ok and lo <= value <= hi, f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def check_float(name: str, value: object, lo: float = -math.inf, hi: float = math.inf,
                *, positive: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] (and > 0 with ``positive``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and lo <= value <= hi and (not positive or value > 0)
    bounded = math.isfinite(lo) or math.isfinite(hi)
    bound = " > 0" if positive else (f" in [{lo:g}, {hi:g}]" if bounded else "")
    require(ok, f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_floats(name: str, values: object, n: int | None = None, *, positive: bool = False,
                 limit: float = 1e30) -> tuple[float, ...]:
    """A tuple of finite floats (``n`` of them when given), each below ``limit`` in size."""
    require(isinstance(values, list | tuple),
            f"{name} must be a list of numbers, got {type(values).__name__}")
    require(n is None or len(values) == n, f"{name} must have {n} values, got {len(values)}")
    return tuple(check_float(f"{name}[{i}]", v, -limit, limit, positive=positive)
                 for i, v in enumerate(values))


def check_str(name: str, value: object, max_len: int = 4096) -> str:
    """A string of at most ``max_len`` characters."""
    require(isinstance(value, str) and len(value) <= max_len,
            f"{name} must be a string of at most {max_len} characters, got "
            f"{type(value).__name__} of length {len(value) if isinstance(value, str) else '?'}")
    return value
