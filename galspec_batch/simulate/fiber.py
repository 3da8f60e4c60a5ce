"""Light of each galaxy component (band fluxes for the images) and the 3" fiber spectrum.

The fiber spectrum is the bulge, disk and structure SEDs (with their emission lines) weighted by
each component's light inside the fiber, plus the AGN, on the rest-frame grid of the paper, with
SDSS-like noise given as inverse variance. Pixels outside the observed 3800-9200 A range of an
SDSS spectrograph get ivar = 0 (and flux 0). Normalisation, as for real spectra from
``ingest-spectra``: flux divided by its mean over the valid (ivar > 0) pixels, ivar multiplied by
the square of that mean.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from galspec_batch.simulate import sed
from galspec_batch.simulate.images import Components
from galspec_batch.simulate.population import Galaxies, uniforms
from galspec_batch.spectra import WAVE

OBSERVED_RANGE = (3800.0, 9200.0)  # A, SDSS spectrographs
STRUCT_EW_BOOST = (2.5, 15.0)  # structure Halpha EW = 2.5 x disk EW + 15 A
_HALPHA = sed.LINE_NAMES.index("Halpha")
_HBETA = sed.LINE_NAMES.index("Hbeta")
_SKY_LINES = np.array([5578.5, 5891.6, 6301.7, 6365.5, 7341.0, 7794.1, 7993.3, 8344.6, 8399.2, 8430.2,
                       8761.3, 8827.1, 8885.8, 8919.6, 8958.1, 9001.4, 9037.9, 9102.0])
_SKY_AMPS = np.array([6.0, 3.0, 3.0, 1.5, 1.5, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 4.0, 3.0, 3.0, 4.0, 3.0, 3.0,
                      3.0])


@dataclass(frozen=True)
class Light:
    """Per-component SED amplitudes and line fluxes at 10 pc (rest frame), arrays over N."""

    coeff: dict[str, np.ndarray]  # component -> [N, 6] coefficients (6th: AGN power law)
    lines: dict[str, np.ndarray]  # component -> [N, n_lines] narrow-line fluxes
    broad: np.ndarray  # [N, n_lines] broad-line fluxes (AGN)


def light(gal: Galaxies) -> Light:
    """Scale each component so the continuum has the galaxy's absolute magnitude and bulge
    fraction, and attach its emission lines."""
    lum = 10 ** (-0.4 * gal.abs_mag_r)
    disk_lum = (1 - gal.bulge_frac) * lum
    parts = {
        "bulge": (gal.coeff_bulge, gal.bulge_frac * lum),
        "disk": (gal.coeff_disk, disk_lum * (1 - gal.struct_frac)),
        "struct": (gal.coeff_struct, disk_lum * gal.struct_frac),
    }
    coeff = {}
    for name, (c, l_r) in parts.items():
        coeff[name] = np.column_stack([c * (l_r / sed.rest_r_maggies(c))[:, None], np.zeros(len(c))])
    t = sed.templates()
    at_halpha = _basis_mean(t, 6500.0, 6630.0)
    ew_struct = STRUCT_EW_BOOST[0] * gal.ew_halpha_disk + STRUCT_EW_BOOST[1]
    lines = {
        "disk": (gal.ew_halpha_disk * (coeff["disk"][:, :5] @ at_halpha))[:, None] * gal.line_ratios,
        "struct": (ew_struct * (coeff["struct"][:, :5] @ at_halpha))[:, None] * gal.line_ratios,
    }
    bulge_halpha = coeff["bulge"][:, :5] @ at_halpha
    agn_halpha = gal.agn_ew_halpha * bulge_halpha
    bulge_5100 = coeff["bulge"][:, :5] @ _basis_mean(t, 5050.0, 5150.0)
    coeff["point"] = np.zeros_like(coeff["bulge"])
    coeff["point"][:, 5] = gal.agn_cont * bulge_5100
    lines["point"] = agn_halpha[:, None] * gal.agn_ratios
    lines["bulge"] = np.zeros_like(lines["disk"])
    broad = np.zeros_like(lines["disk"])
    broad[:, _HALPHA] = gal.agn_broad * agn_halpha
    broad[:, _HBETA] = broad[:, _HALPHA] / 3.1
    return Light(coeff, lines, broad)


def _basis_mean(t: sed.Templates, lo: float, hi: float) -> np.ndarray:
    inside = (t.wave >= lo) & (t.wave <= hi)
    return t.basis[:, inside].mean(axis=1)


def band_components(gal: Galaxies, lt: Light) -> Components:
    """Observed grizy fluxes (nanomaggies) of each component, lines included."""
    out = {}
    for name in ("bulge", "disk", "struct", "point"):
        lines = lt.lines[name] + (lt.broad if name == "point" else 0.0)
        out[name] = 1e9 * (sed.band_fluxes(lt.coeff[name], gal.z) + sed.line_band_fluxes(lines, gal.z))
    return Components(**out)


def star_formation_ew(lt: Light) -> np.ndarray:
    """Galaxy-integrated Halpha equivalent width from star formation (rest frame, A): the
    ``truth_sfr`` proxy (a specific star-formation rate indicator)."""
    at_halpha = _basis_mean(sed.templates(), 6500.0, 6630.0)
    cont = sum(lt.coeff[c][:, :5] @ at_halpha for c in ("bulge", "disk", "struct"))
    return (lt.lines["disk"][:, _HALPHA] + lt.lines["struct"][:, _HALPHA]) / cont


def fiber_spectra(
    gal: Galaxies, lt: Light, fiber_frac: np.ndarray, fiber_r_nmgy: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised rest-frame flux and ivar [N, 1000] (float32) seen by the fiber.

    ``fiber_frac`` [N, 4]: share of bulge, disk, structure and AGN light inside the fiber;
    ``fiber_r_nmgy``: the fiber's r-band flux, which sets the signal-to-noise.
    """
    grid = sed.basis_on_grid()  # [6, 1000]
    narrow, broad = sed.line_profiles(sed.NARROW_SIGMA_KMS), sed.line_profiles(sed.BROAD_SIGMA_KMS)
    flux = np.zeros((len(gal.z), grid.shape[1]))
    for k, name in enumerate(("bulge", "disk", "struct", "point")):
        comp = lt.coeff[name] @ grid + lt.lines[name] @ narrow
        if name == "point":
            comp += lt.broad @ broad
        flux += fiber_frac[:, k : k + 1] * comp

    obs = WAVE[None, :] * (1 + gal.z[:, None])
    valid = (obs >= OBSERVED_RANGE[0]) & (obs <= OBSERVED_RANGE[1])
    ref = np.abs(obs - 6200.0).argmin(axis=1)
    level = np.maximum(np.take_along_axis(flux, ref[:, None], axis=1)[:, 0], 1e-30)
    s = 10 ** (-0.4 * (22.5 - 2.5 * np.log10(np.maximum(fiber_r_nmgy, 1e-3)) - 19.0))
    snr = 22.0 * s / np.sqrt(s + 0.5)  # per 1000-grid pixel near 6200 A observed
    poisson_share = (s / (s + 0.5))[:, None]
    var = (level[:, None] / snr[:, None]) ** 2 * (
        (1 - poisson_share) * _sky_shape(obs) + poisson_share * np.maximum(flux, 0) / level[:, None]
    )
    var = np.maximum(var, 1e-6 * (level[:, None] / snr[:, None]) ** 2)
    normal = ndtri(uniforms(seed, gal.index, grid.shape[1], salt=3))
    noisy = np.where(valid, flux + np.sqrt(var) * normal, 0.0)
    ivar = np.where(valid, 1.0 / var, 0.0)
    mean = np.array([row[ok].mean() if ok.any() else 1.0 for row, ok in zip(noisy, valid, strict=True)])
    mean = np.where(mean > 0, mean, 1.0)
    return (noisy / mean[:, None]).astype(np.float32), (ivar * mean[:, None] ** 2).astype(np.float32)


def _sky_shape(obs: np.ndarray) -> np.ndarray:
    """Relative sky + read noise variance per pixel: worse at the blue end, OH lines in the red."""
    grid, shape = _sky_table()
    return np.interp(obs, grid, shape)


@functools.lru_cache(maxsize=1)
def _sky_table() -> tuple[np.ndarray, np.ndarray]:
    obs = np.arange(3000.0, 12000.0, 1.0)
    shape = 1.0 + np.clip((4500.0 - obs) / 500.0, 0, None) ** 2
    shape += 1.5 * np.clip((obs - 7000.0) / 2000.0, 0, None)
    pix = obs * (np.log(10) * 3.9e-4)  # width of a grid pixel in A, observed
    for wl, amp in zip(_SKY_LINES, _SKY_AMPS, strict=True):
        shape += amp * 8.0 / pix * np.exp(-0.5 * ((obs - wl) / np.maximum(pix / 2, 3.0)) ** 2)
    return obs, shape
