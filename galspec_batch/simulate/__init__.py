"""The mock survey: galaxies whose grizy cutout and fiber spectrum come from the same physical
model (bulge + disk SEDs from DESI redrock archetypes, star formation and its lines in the arms or
clumps, dust that grows with inclination, quenching tied to the bulge, mergers, kinematics), so
that what the image shows (colours, axis ratio, blue structure, tidal features) informs the
spectrum for physical reasons.

Modules: ``sed`` (templates, band fluxes), ``population`` (physical parameters), ``dust``
(attenuation), ``lines`` (emission-line ratios), ``kinematics`` (velocity dispersions,
broadening), ``images`` (cutouts), ``fiber`` (component light and fiber spectra), ``survey`` (the
streamed writer).
"""

from galspec_batch.simulate.survey import MockBatch, SurveySummary, simulate_batch, simulate_survey

__all__ = ["MockBatch", "SurveySummary", "simulate_batch", "simulate_survey"]
