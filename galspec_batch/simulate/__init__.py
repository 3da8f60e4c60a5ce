"""The mock survey: galaxies whose grizy cutout and fiber spectrum come from the same physical
model (bulge + disk SEDs from DESI redrock archetypes, lines tied to the disk's star formation).

Modules: ``sed`` (templates, band fluxes), ``population`` (physical parameters), ``images``
(cutouts), ``fiber`` (component light and fiber spectra), ``survey`` (the streamed writer).
"""

from galspec_batch.simulate.survey import MockBatch, SurveySummary, simulate_batch, simulate_survey

__all__ = ["MockBatch", "SurveySummary", "simulate_batch", "simulate_survey"]
