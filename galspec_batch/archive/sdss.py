"""``galspec download spectra``: SDSS optical spectra by plate, MJD and fiber from the Science
Archive Server (SAS), as the SDSS DR17 bulk-download documentation lays it out; the per-object
"lite" files (coadd and catalog HDUs, no single exposures):

* SDSS-I/II (run2d 26; 103 for the stellar-cluster plates, 104 for SEGUE-2):
  ``/sas/dr17/sdss/spectro/redux/{run2d}/spectra/lite/{plate:04d}/spec-{plate:04d}-{mjd:05d}-{fiber:04d}.fits``
* BOSS, eBOSS and SEQUELS (run2d v5_13_2 in DR17):
  ``/sas/dr17/eboss/spectro/redux/{run2d}/spectra/lite/{plate:04d}/spec-{plate:04d}-{mjd:05d}-{fiber:04d}.fits``

The layout follows the catalog's run2d where it has one (a number: SDSS-I/II; ``v5_*``: BOSS and
eBOSS); without it, from the plate number: plates below 3500 are SDSS-I/II (run2d 26), later ones
BOSS/eBOSS (v5_13_2). Stellar-cluster and SEGUE-2 plates need their run2d in the catalog.

Spectra land flat in the output folder as ``spec-*.fits`` (what ``galspec ingest-spectra`` reads),
with the manifest beside them; each is checked on arrival (a whole FITS file with a COADD HDU).
A rerun downloads only what is missing; a spectrum the archive does not have (HTTP 404) is
quarantined (``<output>.quarantine.csv``) while the rest go on; an archive that asks for a
longer wait than ``retry_after_max`` stops the run (what was fetched is kept for the rerun).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from galspec_batch import defaults as D
from galspec_batch.archive import checks
from galspec_batch.archive.base import Context
from galspec_batch.archive.http import ArchiveBusy, BadBody, Fetcher, HttpSettings, check_base_url
from galspec_batch.archive.inputs import SpectrumId, read_spectrum_ids
from galspec_batch.archive.manifest import Manifest
from galspec_batch.archive.pool import DownloadReport, run_pool
from galspec_batch.errors import GalspecError, InputError, UsageError
from galspec_batch.ingest.quarantine import Quarantined, write_quarantine
from galspec_batch.progress import progress_bar

NAME = "sdss"
LEGACY_RUN2D = "26"  # SDSS-I/II main survey
BOSS_RUN2D = "v5_13_2"  # BOSS and eBOSS in DR17
BOSS_FIRST_PLATE = 3500  # plates from here on are BOSS/eBOSS
COADD = "COADD"
MAX_DATA_BYTES = 16 << 20  # a lite spec file holds ~0.15 MB of data; one that declares more is refused


def run2d_for(plate: int, run2d: str | None = None) -> str:
    """The reduction to fetch: the catalog's, else the plate number's survey (see the module docstring)."""
    if run2d:
        return run2d
    return LEGACY_RUN2D if plate < BOSS_FIRST_PLATE else BOSS_RUN2D


def spectrum_name(plate: int, mjd: int, fiber: int) -> str:
    return f"spec-{plate:04d}-{mjd:05d}-{fiber:04d}.fits"


def spectrum_key(plate: int, mjd: int, fiber: int, run2d: str | None = None, release: str = D.SDSS_RELEASE
                 ) -> str:
    """The SAS path of a lite spec file, e.g. ``/sas/dr17/sdss/spectro/redux/26/spectra/lite/0266/...``."""
    run2d = run2d_for(plate, run2d)
    survey = "sdss" if run2d.isdigit() else "eboss"
    return (f"/sas/{release}/{survey}/spectro/redux/{run2d}/spectra/lite/{plate:04d}/"
            f"{spectrum_name(plate, mjd, fiber)}")


def check_spectrum(path: Path) -> None:
    """A whole FITS file with a COADD HDU, declaring at most MAX_DATA_BYTES of data."""
    names = checks.hdu_names(path, MAX_DATA_BYTES)
    if COADD not in names:
        raise BadBody(f"a FITS file without a {COADD} HDU (HDUs {names[:6]})")


def fetch_spectrum(ctx: Context, spec: SpectrumId) -> bool:
    """Download one spectrum unless already here; True if downloaded."""
    dest = ctx.manifest.folder / spectrum_name(spec.plate, spec.mjd, spec.fiber)
    return ctx.fetch_file(spectrum_key(spec.plate, spec.mjd, spec.fiber, spec.run2d), dest, check_spectrum)


def download_spectra(
    catalog: str | Path,
    output: str | Path,
    *,
    http: HttpSettings | None = None,
    base_url: str | None = None,
    progress: bool = False,
) -> DownloadReport:
    """Download the spectra ``catalog`` lists (CSV: plate, mjd, fiberid, optional run2d) into the
    folder ``output``, resuming what an earlier run there began; see the module docstring."""
    http = http or HttpSettings()
    root = check_base_url(base_url or D.SDSS_URL)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output} exists and is not a folder; --out is the folder the spectra land in")
    specs, quarantined = read_spectrum_ids(catalog)
    n_asked = len(specs) + len(quarantined)
    start = time.monotonic()
    results: list[bool] = []
    with Manifest(output) as manifest, Fetcher(http) as fetcher:
        work = partial(fetch_spectrum, Context(fetcher, manifest, root))
        with progress_bar(len(specs), f"download {NAME}", "spectra", enabled=progress) as advance:
            try:
                for spec, result in run_pool(specs, work, http.concurrency, fetcher.stop, advance):
                    if isinstance(result, GalspecError):
                        quarantined.append(Quarantined(spec.label, None, str(result)))
                    else:
                        results.append(result)
            except ArchiveBusy as exc:
                raise ArchiveBusy(exc.url, exc.seconds, manifest.n_files()) from None
    qfile = write_quarantine(output, quarantined)
    if not results:
        first = quarantined[0].reason if quarantined else "the catalog lists none"
        raise InputError(f"nothing downloaded into {output}: no spectrum could be had (first: {first}"
                         + (f"; all listed in {qfile})" if qfile else ")"))
    downloaded = sum(results)
    table = output.with_name(output.name + ".parquet")
    return DownloadReport(
        output, NAME, "spectra", n_asked, len(results), downloaded, len(results) - downloaded,
        fetcher.stats.requests, fetcher.stats.retries, fetcher.stats.bytes, time.monotonic() - start,
        quarantined=quarantined, quarantine_file=qfile,
        next_step=f"galspec ingest-spectra {output} -o {table}",
    )
