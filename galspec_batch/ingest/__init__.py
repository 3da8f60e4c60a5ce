"""Real-data ingest: Pan-STARRS / HSC FITS cutouts into the cutout store (``cutouts``) and SDSS
``spec-*.fits`` spectra into the spectra table (``sdss``). Per-object problems are quarantined
(``quarantine``) while a batch goes on."""
