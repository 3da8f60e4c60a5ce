"""Real survey data in: cutouts and spectra from the archives' own services (catalogs/archives.md)."""

from __future__ import annotations

import functools

import click

from galspec_batch import defaults as D
from galspec_batch.cli.common import echo_report, out_option, overwrite_option, quiet_option

_HTTP_OPTIONS = (
    click.option("--concurrency", type=click.IntRange(1, 64), default=D.DOWNLOAD_CONCURRENCY,
                 show_default=True, help="Requests in flight at once."),
    click.option("--rate", type=click.FloatRange(0, 1000, min_open=True), default=D.DOWNLOAD_RATE,
                 show_default=True, help="Most requests per second, all workers together."),
    click.option("--timeout", type=click.FloatRange(0, 3600, min_open=True), default=D.DOWNLOAD_TIMEOUT,
                 show_default=True, help="Seconds to connect, and for each read of an answer; a whole answer "
                                         f"must come within {D.DOWNLOAD_DEADLINE_TIMEOUTS} times this."),
    click.option("--retries", type=click.IntRange(0, 100), default=D.DOWNLOAD_RETRIES, show_default=True,
                 help="Tries after the first, on HTTP 429/5xx, timeouts, dropped connections and answers "
                      "that fail their check; a server's Retry-After is honoured."),
    click.option("--backoff", type=click.FloatRange(0, D.DOWNLOAD_BACKOFF_MAX), default=D.DOWNLOAD_BACKOFF,
                 show_default=True, help="Seconds before the first retry, doubled for each next (jittered)."),
    click.option("--base-url", default=None,
                 help="Root URL to use instead of the service's (its paths kept): a mirror, a test server."),
    click.option("--contact", envvar="GALSPEC_CONTACT", default=None,
                 help="E-mail or URL added to the User-Agent, so the archive can reach you "
                      "[env: GALSPEC_CONTACT]."),
)


def _http_options(func):
    """Add the HTTP options; the command gets them as one ``http`` HttpSettings and ``base_url``."""

    @functools.wraps(func)
    def wrapper(concurrency, rate, timeout, retries, backoff, contact, **kwargs):
        from galspec_batch.archive import HttpSettings

        http = HttpSettings(concurrency=concurrency, rate=rate, timeout=timeout, retries=retries,
                            backoff=backoff, contact=contact)
        return func(http=http, **kwargs)

    for option in reversed(_HTTP_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def _bands(ctx, param, text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    from galspec_batch.errors import InputError
    from galspec_batch.ingest.cutouts import parse_bands

    try:
        return parse_bands(text)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("download")
def download_group() -> None:
    """Download cutouts (Pan-STARRS1, Legacy Surveys) or SDSS spectra from the archives' services:
    concurrent, rate-limited, retried, checked on arrival and resumed by a rerun."""


@download_group.command("cutouts")
@click.option("--survey", type=click.Choice(D.CUTOUT_SURVEYS), default=D.CUTOUT_SURVEY, show_default=True,
              help="Cutout service.")
@click.option("--catalog", required=True, type=click.Path(), help="CSV: object_id, ra, dec (degrees).")
@out_option("Cutout store to write.")
@click.option("--size", type=click.IntRange(8, 4096), default=D.CUTOUT_SIZE, show_default=True,
              help="Cutout size in pixels, a side.")
@click.option("--bands", callback=_bands, help="Bands to fetch, e.g. griz [all the survey has: ps1 grizy, "
                                               "legacy griz].")
@click.option("--cache", type=click.Path(), default=None,
              help="Folder for the raw FITS files and their manifest [<out>.download].")
@_http_options
@overwrite_option("store (the cache is kept: nothing is fetched again)")
@quiet_option
def cutouts_cmd(survey, catalog, out, size, bands, cache, base_url, http, overwrite, quiet) -> None:
    """Cutouts of a catalog's objects into a cutout store (via the cache; a rerun resumes)."""
    from galspec_batch.archive import CutoutRequest, download_cutouts

    request = CutoutRequest(survey=survey, size=size, bands=bands, base_url=base_url)
    echo_report(download_cutouts(catalog, out, request=request, http=http, cache=cache, overwrite=overwrite,
                                 progress=not quiet))


@download_group.command("spectra")
@click.option("--catalog", required=True, type=click.Path(),
              help="CSV: plate, mjd, fiberid, optional run2d (as SDSS's specObj has them).")
@out_option("Folder the spec-*.fits files land in (a rerun resumes it).")
@_http_options
@quiet_option
def spectra_cmd(catalog, out, base_url, http, quiet) -> None:
    """SDSS spectra by plate, MJD and fiber into a folder, for galspec ingest-spectra."""
    from galspec_batch.archive import download_spectra

    echo_report(download_spectra(catalog, out, http=http, base_url=base_url, progress=not quiet))


COMMANDS = (download_group,)
