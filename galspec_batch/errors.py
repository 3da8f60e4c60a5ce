"""The project's errors: each also subclasses the matching built-in, and its message names the
file or object it is about, what was found and what was expected."""

from __future__ import annotations


class GalspecError(Exception):
    """Base of every error this package raises on purpose (the CLI prints these in one line)."""


class InputError(GalspecError, ValueError):
    """Bad user input: a wrong shape, a NaN label, a duplicate id, an unknown name."""


class FormatError(GalspecError, ValueError):
    """A file that is not what it claims to be: corrupt FITS, unknown store version."""


class MissingFileError(GalspecError, FileNotFoundError):
    """A path that should exist does not."""


class IncompleteOutputError(GalspecError, RuntimeError):
    """An output left half-written by an interrupted run."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A hint for a mistyped name, e.g. " Did you mean 'xresnet18'?", or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
