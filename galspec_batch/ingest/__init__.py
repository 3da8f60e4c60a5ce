"""Real-data ingest: Pan-STARRS / HSC FITS cutouts into the cutout store (``cutouts``) and SDSS
``spec-*.fits`` spectra into the spectra table (``sdss``). Per-object problems are quarantined
(``quarantine``) while a batch goes on."""

from galspec_batch.ingest.cutouts import ingest_cutouts
from galspec_batch.ingest.quarantine import IngestReport, Quarantined
from galspec_batch.ingest.sdss import ingest_spectra, read_sdss_spectrum

__all__ = ["IngestReport", "Quarantined", "ingest_cutouts", "ingest_spectra", "read_sdss_spectrum"]
