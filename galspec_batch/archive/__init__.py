"""Real survey data in: clients of the archives' own services that download what a catalog lists,
concurrently and politely (a shared rate limit, retries that honour Retry-After, an honest
User-Agent), check every file on arrival, and resume from a manifest after an interruption.

``download_cutouts`` fetches Pan-STARRS1 or Legacy Surveys cutouts and ingests them into a cutout
store; ``download_spectra`` fetches SDSS spectra for ``galspec ingest-spectra``. Protocols, the
manifest and measurements: catalogs/archives.md."""

from galspec_batch.archive.cutouts import CutoutRequest, download_cutouts
from galspec_batch.archive.http import HttpSettings
from galspec_batch.archive.pool import DownloadReport
from galspec_batch.archive.sdss import download_spectra

__all__ = ["CutoutRequest", "DownloadReport", "HttpSettings", "download_cutouts", "download_spectra"]
