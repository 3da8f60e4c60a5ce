"""The ``galspec`` command line: a package of thin command modules, each command a few lines over
a library function. Errors end as one ``galspec: error: ...`` line: exit 2 for a command line
that cannot be used, 1 for runtime and data errors, 130 after Ctrl-C, 143 after SIGTERM."""

from __future__ import annotations

import click

from galspec_batch import __version__
from galspec_batch.cli import analysis, data, demo, download, predict, submit, train, vae
from galspec_batch.cli.common import GalspecGroup


@click.group(cls=GalspecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="galspec")
def main() -> None:
    """Predict galaxy spectra from multi-band images, at survey scale."""


for _module in (data, download, vae, train, predict, submit, analysis, demo):
    for _command in _module.COMMANDS:
        main.add_command(_command)
