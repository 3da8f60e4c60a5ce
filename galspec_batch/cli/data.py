"""Data in: the mock survey, FITS cutouts and SDSS spectra."""

from __future__ import annotations

import click

from galspec_batch import defaults as D
from galspec_batch.cli.common import echo_report, out_option, overwrite_option, quiet_option
from galspec_batch.store.format import DTYPES


def _image_size(ctx, param, text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"expected N or HxW (e.g. 64 or 64x64), got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def _classes(ctx, param, text: str) -> tuple[str, ...]:
    names = tuple(c.strip().upper() for c in text.split(",") if c.strip())
    if not names:
        raise click.BadParameter(f"expected CLASS names such as GALAXY,QSO, got {text!r}")
    return names


@click.command("simulate")
@out_option("Cutout store (Zarr) to write.")
@click.option("--out-spectra", required=True, type=click.Path(), help="Spectra table (Parquet) to write.")
@click.option("-n", "n", type=click.IntRange(min=1), default=D.SIM_GALAXIES, show_default=True,
              help="Number of galaxies.")
@click.option("--image-size", type=click.IntRange(min=8, max=4096), default=D.SIM_IMAGE_SIZE,
              show_default=True,
              help="Cutout size in pixels (paper: 224).")
@click.option("--pixel-scale", type=click.FloatRange(min=0, min_open=True), default=D.PIXEL_SCALE,
              show_default=True, help="Arcsec per pixel.")
@click.option("--seed", type=click.IntRange(min=0), default=D.SEED, show_default=True)
@click.option("--field", nargs=3, type=(click.FloatRange(0, 360), click.FloatRange(-90, 90),
                                        click.FloatRange(0, 180, min_open=True)),
              default=D.SIM_FIELD, show_default=True,
              help="RA DEC RADIUS (degrees) of the sky cap the galaxies lie in.")
@click.option("--anomaly-rate", type=click.FloatRange(0, 1), default=D.SIM_ANOMALY_RATE, show_default=True,
              help="Share of spectra that do not fit their image.")
@click.option("--batch-size", type=click.IntRange(min=1), default=D.SIM_BATCH, show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default=D.STORE_DTYPE, show_default=True)
@click.option("--codec", type=click.Choice(D.STORE_CODECS), default=D.STORE_CODEC, show_default=True,
              help="Compression of the cutouts (catalogs/store-format.md).")
@click.option("--plot", type=click.Path(), default=None, help="Also plot a few galaxies (PNG) to this file.")
@overwrite_option("--out and --out-spectra")
@quiet_option
def simulate_cmd(out, out_spectra, n, image_size, pixel_scale, seed, field, anomaly_rate, batch_size,
                 dtype, codec, plot, overwrite, quiet) -> None:
    """Make a mock survey: grizy cutouts and fiber spectra of the same mock galaxies."""
    from galspec_batch.progress import progress_bar
    from galspec_batch.simulate import simulate_survey

    with progress_bar(n, "simulate", "galaxies", enabled=not quiet) as advance:
        summary = simulate_survey(out, out_spectra, n, image_size=image_size, pixel_scale=pixel_scale,
                                  seed=seed, field=tuple(field), anomaly_rate=anomaly_rate,
                                  batch_size=batch_size, dtype=dtype, codec=codec, overwrite=overwrite,
                                  progress=advance)
    click.echo(str(summary))
    if plot:
        from galspec_batch.plots import plot_mock_survey

        plot_mock_survey(out, out_spectra, plot)
        click.echo(f"  plot:    {plot}")


@click.command("ingest")
@click.argument("inputs", nargs=-1, type=click.Path())
@out_option("Cutout store to write.")
@click.option("--catalog", type=click.Path(), help="CSV: object_id, ra, dec, file_g..file_y.")
@click.option("--bands", "cube_bands", help="Plane order of band cubes without band headers, e.g. grizy.")
@click.option("--image-size", callback=_image_size, help="Centre-crop/pad every cutout to N or HxW pixels.")
@click.option("--pixel-scale", type=click.FloatRange(min=0, min_open=True),
              help="Arcsec per pixel, for files without a WCS.")
@click.option("--survey", default=D.INGEST_SURVEY, show_default=True, help="Survey name stored in the store.")
@click.option("--flux-unit", help="Pixel unit (default: the header BUNIT, else 'unknown').")
@click.option("--zero-point", type=click.FloatRange(-100, 100),
              help="AB zero point of the store, all bands (HSC: 27); Pan-STARRS images with EXPTIME are "
                   f"rescaled onto it (default: {D.PS1_ZERO_POINT:g} for them, 22.5 for nanomaggies, "
                   "else unknown).")
@click.option("--dtype", type=click.Choice(DTYPES), default=D.INGEST_DTYPE, show_default=True)
@click.option("--codec", type=click.Choice(D.STORE_CODECS), default=D.STORE_CODEC, show_default=True,
              help="Compression of the cutouts (catalogs/store-format.md).")
@overwrite_option("store")
@click.option("--strict", is_flag=True, help="Stop at the first bad object instead of quarantining it.")
@quiet_option
def ingest_cmd(inputs, out, catalog, cube_bands, image_size, pixel_scale, survey, flux_unit, zero_point,
               dtype, codec, overwrite, strict, quiet) -> None:
    """FITS cutouts (band cubes or one file per band) into a cutout store."""
    from galspec_batch.ingest.cutouts import ingest_cutouts, parse_bands

    report = ingest_cutouts(
        inputs, out, catalog=catalog, cube_bands=parse_bands(cube_bands) if cube_bands else None,
        image_size=image_size, pixel_scale=pixel_scale, survey=survey, flux_unit=flux_unit,
        zero_point=zero_point, dtype=dtype, codec=codec, overwrite=overwrite, strict=strict,
        progress=not quiet,
    )
    echo_report(report)


@click.command("ingest-spectra")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@out_option("Spectra table to write.")
@click.option("--id-from", type=click.Choice(["specobjid", "bestobjid", "plate-mjd-fiber"]),
              default=D.SPECTRA_ID_FROM, show_default=True, help="Where object ids come from.")
@click.option("--allow-zwarning", is_flag=True, help="Keep spectra whose ZWARNING is set.")
@click.option("--classes", callback=_classes, default=",".join(D.SPECTRA_CLASSES), show_default=True,
              help="The pipeline CLASS values to keep, e.g. GALAXY,QSO.")
@click.option("--min-coverage", type=click.FloatRange(0, 1), default=D.MIN_GRID_COVERAGE, show_default=True,
              help="Least fraction of the rest-frame grid a spectrum must cover.")
@overwrite_option("table")
@click.option("--strict", is_flag=True, help="Stop at the first bad spectrum instead of quarantining it.")
@quiet_option
def ingest_spectra_cmd(inputs, out, id_from, allow_zwarning, classes, min_coverage, overwrite, strict,
                       quiet) -> None:
    """SDSS and BOSS/eBOSS spec-*.fits spectra (files or directories) into a rest-frame spectra table."""
    from galspec_batch.ingest.sdss import ingest_spectra

    report = ingest_spectra(
        inputs, out, id_from=id_from, allow_zwarning=allow_zwarning, min_grid_coverage=min_coverage,
        classes=classes, overwrite=overwrite, strict=strict, progress=not quiet,
    )
    echo_report(report)


COMMANDS = (simulate_cmd, ingest_cmd, ingest_spectra_cmd)
