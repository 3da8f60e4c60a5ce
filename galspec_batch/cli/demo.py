"""The whole chain on a mock survey."""

from __future__ import annotations

import click

from galspec_batch import defaults as D
from galspec_batch.cli.common import quiet_option
from galspec_batch.demo import DemoSettings

DEFAULTS = DemoSettings()


@click.command("demo")
@click.option("-o", "--out", default=D.DEMO_OUT, show_default=True, type=click.Path(),
              help="Output directory.")
@click.option("-n", "n_galaxies", default=DEFAULTS.n_galaxies, show_default=True, help="Mock galaxies.")
@click.option("--image-size", default=DEFAULTS.image_size, show_default=True, help="Cutout size in pixels.")
@click.option("--seed", type=click.IntRange(min=0), default=D.SEED, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@quiet_option
def demo_cmd(out, n_galaxies, image_size, seed, overwrite, quiet) -> None:
    """The whole chain on a mock survey: simulate, train, predict, select, flag, plot."""
    from galspec_batch.demo import run_demo

    settings = DemoSettings(n_galaxies=n_galaxies, image_size=image_size, seed=seed)
    click.echo(str(run_demo(out, settings, overwrite=overwrite, progress=not quiet)))


COMMANDS = (demo_cmd,)
