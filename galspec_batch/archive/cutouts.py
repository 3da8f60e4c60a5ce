"""``galspec download cutouts``: multi-band cutouts of a catalog's objects, fetched from a survey's
cutout service (Pan-STARRS1, the Legacy Surveys) into a cache folder with its manifest, then
ingested into a cutout store by the ingest code (``ingest.ingest_cutouts``), as local files are.

The cache (default ``<output>.download/``) keeps the raw FITS files: a rerun after an
interruption downloads only what is missing, and a rerun with ``overwrite`` rebuilds the store
from the cache without asking the archive again. Objects the archive does not cover, or whose
files could not be had, are quarantined (``<output>.quarantine.csv``) while the rest go on. An
archive that asks for a longer wait than ``retry_after_max`` stops the run: no store is built,
and what was fetched is kept for the rerun.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from galspec_batch import defaults as D
from galspec_batch.archive import legacy, ps1
from galspec_batch.archive.base import CUBE, Context, Fetched, Target
from galspec_batch.archive.http import ArchiveBusy, Fetcher, HttpSettings, check_base_url
from galspec_batch.archive.inputs import read_targets
from galspec_batch.archive.manifest import Manifest
from galspec_batch.archive.pool import DownloadReport, run_pool
from galspec_batch.atomic import atomic_path, refuse_existing
from galspec_batch.columns import DEC, OBJECT_ID, RA
from galspec_batch.errors import GalspecError, InputError, UsageError, did_you_mean
from galspec_batch.ingest.cutouts import ingest_cutouts
from galspec_batch.ingest.quarantine import Quarantined, read_quarantine, write_quarantine
from galspec_batch.progress import progress_bar

CACHE_SUFFIX = ".download"
INGEST_LIST = "ingest.csv"  # in the cache folder: the ingest catalog of the files downloaded
MIN_SIZE, MAX_SIZE = 8, 4096


@dataclass(frozen=True)
class Survey:
    """A cutout service: its bands, root URL, pixel scale, largest cutout, flux unit and zero point
    (None: the ingest code reads them from the headers), and how it fetches one object."""

    name: str
    bands: tuple[str, ...]
    root: str
    pixel_scale: float
    max_size: int
    fetch: Callable[..., Fetched]
    flux_unit: str | None = None
    zero_point: float | None = None


SURVEYS = {
    ps1.NAME: Survey(ps1.NAME, ps1.BANDS, D.PS1_URL, ps1.PIXEL_SCALE, MAX_SIZE, ps1.fetch_object),
    legacy.NAME: Survey(legacy.NAME, legacy.BANDS, D.LEGACY_URL, legacy.PIXEL_SCALE, legacy.MAX_SIZE,
                        legacy.fetch_object, legacy.FLUX_UNIT, legacy.ZERO_POINT),
}


@dataclass(frozen=True)
class CutoutRequest:
    """What to ask the survey for: its name, the cutout size in pixels, the bands (None: all the
    survey has, in its order) and the root URL (None: the service's own)."""

    survey: str = D.CUTOUT_SURVEY
    size: int = D.CUTOUT_SIZE
    bands: tuple[str, ...] | None = None
    base_url: str | None = None

    def __post_init__(self) -> None:
        if self.survey not in SURVEYS:
            raise UsageError(f"--survey {self.survey!r} is not one of {tuple(SURVEYS)}."
                             + did_you_mean(self.survey, tuple(SURVEYS)))
        survey = SURVEYS[self.survey]
        if not MIN_SIZE <= self.size <= survey.max_size:
            raise UsageError(f"--size must be {MIN_SIZE} to {survey.max_size} pixels for {self.survey}, "
                             f"got {self.size}")
        bands = tuple(self.bands) if self.bands is not None else survey.bands
        unknown = [b for b in bands if b not in survey.bands]
        if not bands or unknown or len(set(bands)) != len(bands):
            raise UsageError(f"--bands {''.join(bands)!r}: {self.survey} has bands {''.join(survey.bands)}, "
                             "each at most once")
        object.__setattr__(self, "bands", bands)
        object.__setattr__(self, "base_url", check_base_url(self.base_url or survey.root))


def cache_folder(output: str | Path) -> Path:
    """The default cache of raw files beside a store: ``<output>.download/``."""
    output = Path(output)
    return output.with_name(output.name + CACHE_SUFFIX)


def download_cutouts(
    catalog: str | Path,
    output: str | Path,
    *,
    request: CutoutRequest | None = None,
    http: HttpSettings | None = None,
    cache: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> DownloadReport:
    """Download the cutouts of ``catalog``'s objects (CSV: object_id, ra, dec) and ingest them into
    a new cutout store at ``output``; see the module docstring."""
    request = request or CutoutRequest()
    http = http or HttpSettings()
    output = Path(output)
    refuse_existing(output, overwrite)
    survey = SURVEYS[request.survey]
    targets, quarantined = read_targets(catalog)
    n_asked = len(targets) + len(quarantined)
    folder = Path(cache) if cache is not None else cache_folder(output)
    start = time.monotonic()
    fetched: list[Fetched] = []
    with Manifest(folder) as manifest, Fetcher(http) as fetcher:
        work = partial(survey.fetch, Context(fetcher, manifest, request.base_url),
                       size=request.size, bands=request.bands)
        with progress_bar(len(targets), f"download {survey.name}", "objects", enabled=progress) as advance:
            try:
                for target, result in run_pool(targets, work, http.concurrency, fetcher.stop, advance):
                    if isinstance(result, GalspecError):
                        quarantined.append(Quarantined(target.label, target.object_id, str(result)))
                    else:
                        fetched.append(result)
            except ArchiveBusy as exc:
                raise ArchiveBusy(exc.url, exc.seconds, manifest.n_files()) from None
    order = {t.object_id: k for k, t in enumerate(targets)}
    fetched.sort(key=lambda f: order[f.target.object_id])
    report = DownloadReport(
        output, survey.name, "objects", n_asked, len(fetched), sum(f.downloaded for f in fetched),
        sum(f.reused for f in fetched), fetcher.stats.requests, fetcher.stats.retries, fetcher.stats.bytes,
        time.monotonic() - start, missing_bands=sum(bool(f.missing_bands) for f in fetched),
    )
    if not fetched:
        qfile = write_quarantine(output, quarantined)
        first = quarantined[0].reason if quarantined else "the catalog lists none"
        raise InputError(f"nothing downloaded for {output}: no object could be had (first: {first}"
                         + (f"; all listed in {qfile})" if qfile else ")"))
    listing = write_ingest_list(folder, fetched, request.bands)
    report.ingested, more = _ingest(listing, output, survey, request.bands, quarantined, overwrite, progress)
    report.quarantined = quarantined + more
    report.quarantine_file = write_quarantine(output, report.quarantined)
    return report


def write_ingest_list(folder: Path, fetched: list[Fetched], bands: tuple[str, ...]) -> Path:
    """The ingest catalog of the downloaded files (object_id, ra, dec, file_<band>.. or file, paths
    relative to it), written atomically into the cache folder."""
    cube = any(CUBE in f.files for f in fetched) and len(bands) > 1
    file_columns = ["file"] if cube else [f"file_{b}" for b in bands]
    path = folder / INGEST_LIST
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([OBJECT_ID, RA, DEC, *file_columns])
        for f in fetched:
            t: Target = f.target
            if cube:
                cells = [f.files[CUBE]]
            else:
                files = {bands[0]: f.files[CUBE]} if CUBE in f.files else f.files
                cells = [files.get(b, "") for b in bands]
            rel = [c.relative_to(folder).as_posix() if c else "" for c in cells]
            writer.writerow([t.object_id, repr(t.ra), repr(t.dec), *rel])
    return path


def _ingest(listing: Path, output: Path, survey: Survey, bands: tuple[str, ...],
            quarantined: list[Quarantined], overwrite: bool, progress: bool) -> tuple[int, list[Quarantined]]:
    """Ingest the downloaded files; the number ingested and the objects ingest quarantined. When
    ingest takes none, its quarantine list is merged with the download's before the error goes on."""
    try:
        report = ingest_cutouts(catalog=listing, output=output, bands=bands, survey=survey.name,
                                flux_unit=survey.flux_unit, zero_point=survey.zero_point,
                                overwrite=overwrite, progress=progress)
    except InputError:
        write_quarantine(output, quarantined + read_quarantine(output))
        raise
    return report.n_ingested, list(report.quarantined)
