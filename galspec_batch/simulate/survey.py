"""The mock survey: positions, galaxies, cutouts and fiber spectra, streamed to a cutout store and
a Parquet spectra table in batches (memory bounded), deterministic by seed.

Positions are drawn first (cheap) and sorted by ``_healpix_29``; galaxies are then generated in
that order, so each append is already sorted. Everything about an object is a function of
(seed, its draw index), so results do not depend on the batch size.

Fluxes are nanomaggies (AB zero point 22.5). Sizes are drawn in kpc and turned into arcsec with
the angular-diameter distance, fluxes fall with the luminosity distance: surface brightness dims
as (1+z)^4. Truth columns of the spectra table (they describe the galaxy in the image):
``truth_z``; ``truth_bulge_frac`` (bulge share of rest-frame r continuum light); ``truth_sfr``
(galaxy-integrated Halpha equivalent width from star formation, rest frame, A: an sSFR proxy);
``truth_anomaly`` (the spectrum comes from another kind of galaxy); ``truth_agn``;
``truth_r_mag`` and ``truth_fiber_r_mag`` (total and 3" fiber, PS1 r, AB); ``truth_abs_mag_r``;
``truth_re_disk_arcsec``; ``truth_cos_i`` (disk inclination); ``truth_av`` (V-band attenuation of
the stellar light, mag); ``truth_passive`` (quenched: no star formation); ``truth_merger`` (tidal
features, starburst); ``truth_sigma_v`` (light-weighted stellar velocity dispersion, km/s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path, refuse_existing
from galspec_batch.columns import NORM
from galspec_batch.errors import InputError, UsageError
from galspec_batch.simulate import fiber, images, kinematics, population
from galspec_batch.simulate.sed import BANDS
from galspec_batch.sky import healpix_29
from galspec_batch.spectra_table import described_spectra_schema, spectra_to_table, validate_spectra_table
from galspec_batch.store import create_store

SURVEY_NAME = "mock-ps1"
ID_STRIDE = 10**12  # object_id = (seed % 10**6 + 1) * ID_STRIDE + draw index


@dataclass(frozen=True)
class MockBatch:
    """One batch of mock objects: cutouts, spectra and truth."""

    object_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    images: np.ndarray  # [N, 5, H, W] float32 nanomaggies
    mask: np.ndarray  # [N, 5] bool
    flux: np.ndarray  # [N, 1000] float32, unit mean over valid pixels
    ivar: np.ndarray  # [N, 1000] float32
    norm: np.ndarray  # [N] what the flux was divided by, in NORM_UNIT (as SDSS ingest's)
    truth: dict[str, np.ndarray]  # truth_* columns

    @property
    def z(self) -> np.ndarray:
        return self.truth["truth_z"]


@dataclass(frozen=True)
class SurveySummary:
    n_objects: int
    image_shape: tuple[int, int]
    pixel_scale: float
    seed: int
    store: Path
    spectra: Path
    n_anomalies: int
    n_agn: int
    n_missing_band: int
    n_nan: int
    z_median: float
    r_mag_range: tuple[float, float]

    def __str__(self) -> str:
        return (
            f"{self.n_objects} mock galaxies ({self.image_shape[0]}x{self.image_shape[1]} px at "
            f'{self.pixel_scale}"/px, seed {self.seed}): median z {self.z_median:.3f}, r '
            f"{self.r_mag_range[0]:.1f}-{self.r_mag_range[1]:.1f}, {self.n_anomalies} anomalies, "
            f"{self.n_agn} AGN, {self.n_missing_band} with a missing band, {self.n_nan} with NaN "
            f"pixels\n  store:   {self.store}\n  spectra: {self.spectra}"
        )


def id_offset(seed: int) -> int:
    return (seed % 10**6 + 1) * ID_STRIDE


def draw_positions(n: int, seed: int, field: tuple[float, float, float] = D.SIM_FIELD):
    """RA, Dec (deg) uniform on a spherical cap of ``field = (ra0, dec0, radius_deg)``."""
    ra0, dec0, radius = (float(v) for v in field)
    if not (0 < radius <= 180 and -90 <= dec0 <= 90):
        raise InputError(
            f"field must be (ra0, dec0, radius_deg) with -90 <= dec0 <= 90 and 0 < radius <= 180, got {field}"
        )
    u = population.uniforms(seed, np.arange(n), 2, salt=5)
    cos_t = 1 - u[:, 0] * (1 - np.cos(np.deg2rad(radius)))
    sin_t = np.sqrt(1 - cos_t**2)
    phi = 2 * np.pi * u[:, 1]
    # point around the north pole, rotated to (ra0, dec0)
    v = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t])
    a, d = np.deg2rad(ra0), np.deg2rad(dec0)
    tilt = np.array([[np.sin(d), 0, np.cos(d)], [0, 1, 0], [-np.cos(d), 0, np.sin(d)]])
    spin = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    x, y, zz = spin @ tilt @ v
    return np.rad2deg(np.arctan2(y, x)) % 360.0, np.rad2deg(np.arcsin(np.clip(zz, -1, 1)))


def simulate_batch(
    index: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    *,
    seed: int = 0,
    image_shape: tuple[int, int] = (64, 64),
    pixel_scale: float = 0.25,
    anomaly_rate: float = 0.01,
) -> MockBatch:
    """Make the objects with draw indices ``index`` at (ra, dec)."""
    gal = population.draw_galaxies(seed, index, anomaly_rate)
    lt = fiber.light(gal)
    comp = fiber.band_components(gal, lt)
    rendered = images.render(gal, comp, seed, tuple(image_shape), pixel_scale)
    r = 1  # index of the r band
    spec_r = {c: getattr(comp, c)[:, r].copy() for c in fiber.COMPONENTS}  # the spectrum's light
    spec_gal, spec_lt = gal, lt
    if gal.anomaly.any():  # differs from the image's for these rows only
        rows = np.flatnonzero(gal.anomaly)
        spec_gal = population.spectral_params(seed, gal)
        spec_lt = fiber.light(spec_gal)
        odd = fiber.band_components(spec_gal.take(rows), spec_lt.take(rows))
        for c in fiber.COMPONENTS:
            spec_r[c][rows] = getattr(odd, c)[:, r]
    fiber_r = sum(rendered.fiber_frac[:, k] * spec_r[c] for k, c in enumerate(fiber.COMPONENTS))
    flux, ivar, norm = fiber.fiber_spectra(spec_gal, spec_lt, rendered.fiber_frac, fiber_r, seed)
    total = sum(getattr(comp, c) for c in fiber.COMPONENTS)
    truth = {
        "truth_z": gal.z,
        "truth_bulge_frac": gal.bulge_frac,
        "truth_sfr": fiber.star_formation_ew(lt),
        "truth_anomaly": gal.anomaly,
        "truth_agn": gal.agn,
        "truth_r_mag": 22.5 - 2.5 * np.log10(total[:, r]),
        "truth_fiber_r_mag": 22.5 - 2.5 * np.log10(np.maximum(fiber_r, 1e-3)),
        "truth_abs_mag_r": gal.abs_mag_r,
        "truth_re_disk_arcsec": gal.re_disk,
        "truth_cos_i": gal.cos_i,
        "truth_av": lt.av,
        "truth_passive": gal.passive,
        "truth_merger": gal.merger,
        "truth_sigma_v": kinematics.fiber_dispersion(gal.bulge_frac, gal.sigma_bulge, gal.sigma_disk),
    }
    return MockBatch(
        object_id=id_offset(seed) + np.asarray(index, dtype=np.int64),
        ra=np.asarray(ra, dtype=np.float64),
        dec=np.asarray(dec, dtype=np.float64),
        images=rendered.images,
        mask=rendered.mask,
        flux=flux,
        ivar=ivar,
        norm=norm,
        truth=truth,
    )


def simulate_survey(
    out_store: str | Path,
    out_spectra: str | Path,
    n: int,
    *,
    image_size: int | tuple[int, int] = D.SIM_IMAGE_SIZE,
    pixel_scale: float = D.PIXEL_SCALE,
    seed: int = D.SEED,
    field: tuple[float, float, float] = D.SIM_FIELD,
    anomaly_rate: float = D.SIM_ANOMALY_RATE,
    batch_size: int = D.SIM_BATCH,
    dtype: str = D.STORE_DTYPE,
    codec: str = D.STORE_CODEC,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SurveySummary:
    """Write a mock survey of ``n`` galaxies: a cutout store and a Parquet spectra table.

    Both outputs appear atomically when the run finishes. ``progress(k)`` is called after each
    batch with the number of objects just written.
    """
    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}")
    if not 0 <= anomaly_rate <= 1:
        raise InputError(f"anomaly_rate must be in [0, 1], got {anomaly_rate}")
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    shape = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(shape) < 8:
        raise UsageError(f"--image-size must be at least 8 pixels, got {image_size}")
    out_store, out_spectra = Path(out_store), Path(out_spectra)
    for p in (out_store, out_spectra):
        refuse_existing(p, overwrite)
    ra, dec = draw_positions(n, seed, field)
    order = np.argsort(healpix_29(ra, dec), kind="stable")
    stats = _Stats()
    with (
        create_store(out_store, bands=BANDS, image_shape=shape, pixel_scale=pixel_scale, survey=SURVEY_NAME,
                     zero_points={b: 22.5 for b in BANDS}, dtype=dtype, codec=codec,
                     overwrite=overwrite) as store,
        atomic_path(out_spectra, overwrite=overwrite) as tmp_spectra,
    ):
        writer = None
        try:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                batch = simulate_batch(idx, ra[idx], dec[idx], seed=seed, image_shape=shape,
                                       pixel_scale=pixel_scale, anomaly_rate=anomaly_rate)
                store.append(batch.object_id, batch.ra, batch.dec, batch.images, batch.mask)
                table = validate_spectra_table(spectra_to_table(
                    batch.object_id, batch.ra, batch.dec, batch.z, batch.flux, batch.ivar,
                    {NORM: batch.norm, **batch.truth}))
                if writer is None:
                    writer = pq.ParquetWriter(tmp_spectra, described_spectra_schema(table.schema),
                                              compression="zstd")
                writer.write_table(table)
                stats.add(batch)
                if progress is not None:
                    progress(len(idx))
        finally:
            if writer is not None:
                writer.close()
    return SurveySummary(n_objects=n, image_shape=shape, pixel_scale=pixel_scale, seed=seed, store=out_store,
                         spectra=out_spectra, **stats.summary())


class _Stats:
    def __init__(self) -> None:
        self.counts = dict(n_anomalies=0, n_agn=0, n_missing_band=0, n_nan=0)
        self.z: list[np.ndarray] = []
        self.r_lo, self.r_hi = np.inf, -np.inf

    def add(self, b: MockBatch) -> None:
        self.counts["n_anomalies"] += int(b.truth["truth_anomaly"].sum())
        self.counts["n_agn"] += int(b.truth["truth_agn"].sum())
        self.counts["n_missing_band"] += int((~b.mask).any(axis=1).sum())
        self.counts["n_nan"] += int(np.isnan(b.images).any(axis=(1, 2, 3)).sum())
        self.z.append(b.z.astype(np.float32))
        self.r_lo = min(self.r_lo, float(b.truth["truth_r_mag"].min()))
        self.r_hi = max(self.r_hi, float(b.truth["truth_r_mag"].max()))

    def summary(self) -> dict:
        return dict(**self.counts, z_median=float(np.median(np.concatenate(self.z))),
                    r_mag_range=(self.r_lo, self.r_hi))

