"""The project's errors: each also subclasses the matching built-in, and its message names the
file, object or command-line option it is about, what was found and what was expected.

The command line turns them into one ``galspec: error: ...`` line and an exit status:
``UsageError`` (a command-line value that cannot be used) exits 2, every other error exits 1.
"""

from __future__ import annotations


class GalspecError(Exception):
    """Base of every error this package raises on purpose (the CLI prints these in one line)."""


class InputError(GalspecError, ValueError):
    """Bad input data: a wrong shape, a NaN label, a duplicate id, a store that does not fit."""


class UsageError(InputError):
    """A command-line value that cannot be used: an unknown name, a bad number, a bad region."""


class FormatError(GalspecError, ValueError):
    """A file that is not what it claims to be: corrupt FITS, unknown format version."""


class MissingFileError(GalspecError, FileNotFoundError):
    """A path that should exist does not."""


class IncompleteOutputError(GalspecError, RuntimeError):
    """An output left half-written, damaged or missing parts; rerunning the command repairs it."""


class BusyError(GalspecError, RuntimeError):
    """Another run holds the output (its lock names the holder)."""


class SlurmError(GalspecError, RuntimeError):
    """A SLURM command failed; the message quotes SLURM's own words."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT or SIGTERM); nothing half-done was kept. Like
    KeyboardInterrupt it is no Exception, so no ``except Exception`` of a partition swallows it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


INTERRUPTED = "interrupted; rerun the same command to resume"
_SIGNALLED: list[int] = []  # the signal stop_on_signal raised Interrupted for, until the command ends


def stop_on_signal(signum: int, frame: object = None) -> None:
    """A command's handler of SIGINT and SIGTERM: raise Interrupted, and remember the signal, so
    that a run still stops at its next batch where the exception was lost (Python drops one that
    a signal raises inside a finalizer, and the run would go on to exit 0)."""
    _SIGNALLED[:] = [signum]
    raise Interrupted(INTERRUPTED, signum)


def raise_if_signalled() -> None:
    """Raise Interrupted if a command's signal handler ran (see ``stop_on_signal``)."""
    if _SIGNALLED:
        raise Interrupted(INTERRUPTED, _SIGNALLED[0])


def forget_signals() -> None:
    """A command starts or ends: no signal is pending."""
    _SIGNALLED.clear()


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A hint for a mistyped name, e.g. " Did you mean 'xresnet18'?", or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
