"""The ``galspec`` command line: each command is a few lines over a library function."""

from __future__ import annotations

import functools
import sys

import click

from galspec_batch import __version__
from galspec_batch.errors import GalspecError


def one_line_errors(func):
    """Print a project error as one line on stderr and exit 2, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (GalspecError, FileNotFoundError, FileExistsError) as exc:
            click.echo(f"galspec: error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="galspec")
def main() -> None:
    """Predict galaxy spectra from multi-band images, at survey scale."""


# -- end of commands --

if __name__ == "__main__":
    main()
