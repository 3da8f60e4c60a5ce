"""Rest-frame galaxy SEDs for the mock survey: the DESI redrock galaxy basis and its archetypes.

The package copy (``galspec_batch/data/redrock_galaxy_compact.npz``, made by
``data/build_redrock_compact.py``) holds the 5 PCA basis vectors on log10(lambda) 3.40-4.00 (vacuum,
rest frame) with the nebular lines removed, and the archetype coefficients of 750 real galaxies.
Every dust-free SED here is linear in the 5 coefficients, so band fluxes and the spectral grid (at
each velocity dispersion) are tabulated once per basis vector and combined per object with a dot
product. Dust makes an SED non-linear in them, so the band fluxes of attenuated SEDs integrate each
object's SED on a fixed log-lambda lattice, where a redshift is a shift (``band_maggies``).

Units: an SED is f_lambda in erg/s/cm^2/A as seen from 10 pc; observed fluxes are maggies
(x1e9 for nanomaggies), computed with the Pan-STARRS curves of ``speclite``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
import speclite.filters
from astropy.cosmology import Planck18
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import gaussian_filter1d
from scipy.special import erf

from galspec_batch.spectra import LOGLAM_EDGES

BANDS = ("g", "r", "i", "z", "y")
R_BAND = 1
C_ANGSTROM = 2.99792458e18  # speed of light in A/s
C_KMS = 2.99792458e5
AB_FNU = 3631e-23  # erg/s/cm^2/Hz
PC10_MPC = 1e-5
Z_TABLE = np.linspace(0.0, 0.5, 401)  # dust-free band fluxes are interpolated on this grid
_EXTEND_TO = 11100.0  # A, rest; past the basis's 10000 A end the continuum is extrapolated linearly
_BAND_DLOG = 4e-4  # log10 step of the photometry lattice (4 template pixels; speclite to < 0.05%)
POST_STARBURST_ARCHETYPES = 20  # the archetypes with the strongest Hdelta absorption
# Lick Hdelta_A bands (Worthey & Ottaviani 1997): index, blue and red pseudo-continua, A
_HDELTA_A = ((4083.50, 4122.25), (4041.60, 4079.75), (4128.50, 4161.00))

# Emission lines (vacuum rest wavelengths, A). Ratios are set per object in population.py.
LINES = {
    "OII_3727": 3727.09, "OII_3730": 3729.88, "Hgamma": 4341.68, "Hbeta": 4862.68,
    "OIII_4960": 4960.30, "OIII_5008": 5008.24, "NII_6550": 6549.86, "Halpha": 6564.61,
    "NII_6585": 6585.27, "SII_6718": 6718.29, "SII_6733": 6732.67,
}
LINE_NAMES = tuple(LINES)
LINE_WAVE = np.array([LINES[n] for n in LINE_NAMES])
BROAD_SIGMA_KMS = 2000.0
AGN_SLOPE = -1.5  # f_lambda ~ lambda**slope for the AGN continuum


@dataclass(frozen=True)
class Templates:
    """The basis on the data grid, archetypes, and per-archetype summaries."""

    wave: np.ndarray  # [n_wave] A, rest, log-spaced
    basis: np.ndarray  # [5, n_wave]
    coeff: np.ndarray  # [750, 5] archetype coefficients (unit mean f_lambda over 5400-5600 A)
    d4000: np.ndarray  # [750] 4000 A break strength of each archetype
    hdelta: np.ndarray  # [750] Hdelta_A absorption index, A (A stars: strong)
    by_age: np.ndarray  # archetype indices sorted from youngest (low D4000) to oldest
    kms_per_pixel: float  # velocity step of the log-spaced wavelengths

    def archetype(self, quantile: np.ndarray) -> np.ndarray:
        """Coefficients [N, 5] of the archetype at an age quantile in [0, 1] (0 = youngest)."""
        k = np.clip((np.asarray(quantile) * len(self.by_age)).astype(int), 0, len(self.by_age) - 1)
        return self.coeff[self.by_age[k]]

    def post_starburst(self, u: np.ndarray) -> np.ndarray:
        """Coefficients [N, 5] of A-star-rich continua: one of the archetypes with the strongest
        Hdelta absorption, picked by u in [0, 1) (Dressler & Gunn 1983; Wild et al. 2009)."""
        strongest = np.argsort(-self.hdelta, kind="stable")[:POST_STARBURST_ARCHETYPES]
        pick = np.minimum((np.asarray(u) * len(strongest)).astype(int), len(strongest) - 1)
        return self.coeff[strongest[pick]]


@functools.lru_cache(maxsize=1)
def templates() -> Templates:
    with resources.files("galspec_batch").joinpath("data", "redrock_galaxy_compact.npz").open("rb") as fh:
        data = np.load(fh, allow_pickle=False)
        loglam, basis, coeff = data["loglam"], data["basis"].astype(np.float64), data["archetype_coeff"]
    wave = 10.0**loglam
    dlog = loglam[1] - loglam[0]
    extra = 10.0 ** (loglam[-1] + dlog * np.arange(1, int(np.log10(_EXTEND_TO / wave[-1]) / dlog) + 2))
    fit = wave > 9000.0
    slopes = [np.polyfit(wave[fit], b[fit], 1) for b in basis]
    basis = np.hstack([basis, np.array([np.polyval(p, extra) for p in slopes])])
    wave = np.concatenate([wave, extra])
    coeff = np.asarray(coeff, dtype=np.float64)
    seds = coeff @ basis
    coeff = coeff / _window_mean(wave, seds, 5400, 5600)[:, None]
    seds = coeff @ basis
    d4000 = _window_mean(wave, seds, 4000, 4100) / _window_mean(wave, seds, 3850, 3950)
    (lo, hi), blue, red = _HDELTA_A
    band = (wave >= lo) & (wave <= hi)
    pseudo = 0.5 * (_window_mean(wave, seds, *blue) + _window_mean(wave, seds, *red))
    hdelta = ((1 - seds[:, band] / pseudo[:, None]) * np.gradient(wave)[band]).sum(axis=1)
    return Templates(wave, basis, coeff, d4000, hdelta, np.argsort(d4000, kind="stable"),
                     C_KMS * np.log(10) * dlog)


def _window_mean(wave: np.ndarray, seds: np.ndarray, lo: float, hi: float) -> np.ndarray:
    inside = (wave >= lo) & (wave <= hi)
    return seds[..., inside].mean(axis=-1)


def rowwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for per-object rows ``a`` [N, K], each row summed in one fixed order: BLAS sums a
    row differently depending on its place in the batch, and objects must not depend on their
    batch."""
    return np.einsum("nk,k...->n...", a, b)


@functools.lru_cache(maxsize=1)
def filters() -> speclite.filters.FilterSequence:
    return speclite.filters.load_filters(*[f"panstarrs-{b}" for b in BANDS])


def luminosity_distance_mpc(z: np.ndarray) -> np.ndarray:
    return np.interp(z, _COSMO_Z, _cosmo_table()[0])


def angular_diameter_distance_kpc(z: np.ndarray) -> np.ndarray:
    return np.interp(z, _COSMO_Z, _cosmo_table()[1])


_COSMO_Z = np.linspace(1e-4, 1.0, 4000)


@functools.lru_cache(maxsize=1)
def _cosmo_table() -> tuple[np.ndarray, np.ndarray]:
    return (
        Planck18.luminosity_distance(_COSMO_Z).to_value("Mpc"),
        Planck18.angular_diameter_distance(_COSMO_Z).to_value("kpc"),
    )


def distance_dimming(z: np.ndarray) -> np.ndarray:
    """(10 pc / D_L)^2: scales a 10-pc flux to the observed one (the (1+z) is in ``band_maggies``)."""
    return (PC10_MPC / luminosity_distance_mpc(np.maximum(z, 1e-4))) ** 2


@dataclass(frozen=True)
class BandGrid:
    """A log-lambda lattice for broadband photometry: rest-frame SEDs are sampled on it, and the
    same lattice, read in the observed frame, carries the filter weights."""

    wave: np.ndarray  # [n] A, bin centres (rest frame for SEDs, observed frame for ``weight``)
    basis: np.ndarray  # [6, n] basis vectors and the AGN power law, bin-averaged
    weight: np.ndarray  # [n, 5] maggies per unit f_lambda (erg/s/cm^2/A) in each observed bin
    seen: tuple[slice, ...]  # per band, the bins its filter sees


@functools.lru_cache(maxsize=1)
def band_grid() -> BandGrid:
    t = templates()
    loglam = np.log10(t.wave[0]) + _BAND_DLOG * np.arange(int(np.log10(t.wave[-1] / t.wave[0]) / _BAND_DLOG))
    edges = 10.0 ** np.concatenate([[loglam[0] - _BAND_DLOG / 2], loglam + _BAND_DLOG / 2])
    wave = 10.0**loglam
    resp_wave, resp, norm = _band_line_norm()
    response = np.stack([np.interp(wave, resp_wave, r, left=0.0, right=0.0) for r in resp], axis=1)
    weight = response * (wave**2 * np.log(10) * _BAND_DLOG)[:, None] / norm[None, :]
    seen = tuple(slice(int(k[0]), int(k[-1]) + 1) for k in (np.flatnonzero(w) for w in weight.T))
    return BandGrid(wave, rebin(t.wave, _vectors(t), edges), weight, seen)


def _vectors(t: Templates) -> np.ndarray:
    """The 5 basis vectors and the AGN power law (normalised to f_lambda = 1 at 5100 A)."""
    return np.vstack([t.basis, (t.wave / 5100.0) ** AGN_SLOPE])


def band_maggies(rest_sed: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Maggies [N, 5] of rest-frame SEDs [N, n] on ``band_grid()`` (10-pc f_lambda) seen at
    redshift z, before distance dimming: f_obs(lambda) = f_rest(lambda / (1+z)) / (1+z), the
    redshift being a shift of log(1+z) on the lattice (linear interpolation between bins)."""
    grid = band_grid()
    z = np.asarray(z, dtype=np.float64)
    shift = np.log10(1 + z) / _BAND_DLOG
    whole = np.floor(shift).astype(int)
    frac = (shift - whole)[:, None]
    lo, hi = min(s.start for s in grid.seen), max(s.stop for s in grid.seen)
    # observed bin lo + k lies between rest bins lo + k - whole - 1 and that + 1
    pad = max(int(whole.max(initial=0)) + 1 - lo, 0)
    padded = np.pad(rest_sed, ((0, 0), (pad, 0))) if pad else rest_sed
    windows = sliding_window_view(padded, hi - lo + 1, axis=1)[np.arange(len(z)), lo - whole - 1 + pad]
    observed = (1 - frac) * windows[:, 1:] + frac * windows[:, :-1]
    per_band = [rowwise(observed[:, s.start - lo : s.stop - lo], grid.weight[s, b])
                for b, s in enumerate(grid.seen)]
    return np.stack(per_band, axis=1) / (1 + z)[:, None]


@functools.lru_cache(maxsize=1)
def band_flux_table() -> np.ndarray:
    """[6, 5, len(Z_TABLE)] maggies of each basis vector (and, last, the AGN power law normalised
    to f_lambda=1 at 5100 A) redshifted to z, before distance dimming."""
    basis = band_grid().basis
    maggies = band_maggies(np.tile(basis, (len(Z_TABLE), 1)), np.repeat(Z_TABLE, len(basis)))
    return maggies.reshape(len(Z_TABLE), len(basis), -1).transpose(1, 2, 0)


def band_fluxes(coeff: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Observed maggies [N, 5] of dust-free SEDs with coefficients [N, 5] (or [N, 6] with the
    AGN term), interpolated between redshifts of ``Z_TABLE``."""
    table = band_flux_table()[: coeff.shape[1]]
    zi = np.clip(np.asarray(z) / (Z_TABLE[1] - Z_TABLE[0]), 0, len(Z_TABLE) - 1.000001)
    i0 = zi.astype(int)
    w = (zi - i0)[:, None, None]
    per_vector = table[:, :, i0].transpose(2, 0, 1) * (1 - w) + table[:, :, i0 + 1].transpose(2, 0, 1) * w
    return np.einsum("nk,nkb->nb", coeff, per_vector) * distance_dimming(z)[:, None]


def rest_r_maggies(coeff: np.ndarray) -> np.ndarray:
    """Rest-frame (z=0, 10 pc) r-band maggies of dust-free SEDs [N, 5]: sets absolute magnitudes."""
    return rowwise(coeff, band_flux_table()[: coeff.shape[1], R_BAND, 0])


@functools.lru_cache(maxsize=1)
def _band_line_norm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Filter curves on a common grid and the AB normalisation of each band."""
    wave = np.linspace(3800.0, 11100.0, 7301)
    resp = np.array([np.asarray(f(wave)) for f in filters()])
    norm = AB_FNU * C_ANGSTROM * np.trapezoid(resp / wave, wave, axis=1)
    return wave, resp, norm


def line_band_fluxes(line_flux: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Observed maggies [N, 5] of emission lines with 10-pc fluxes [N, n_lines] (erg/s/cm^2)."""
    wave, resp, norm = _band_line_norm()
    obs = LINE_WAVE[None, :] * (1 + np.asarray(z))[:, None]  # [N, L]
    r = np.stack([np.interp(obs, wave, resp[b]) for b in range(len(BANDS))], axis=-1)  # [N, L, 5]
    per_line = r * obs[..., None] / norm
    return np.einsum("nl,nlb->nb", line_flux, per_line) * distance_dimming(z)[:, None]


def basis_on_grid(sigma_kms: float) -> np.ndarray:
    """[6, 1000] basis vectors (and the AGN power law) Gaussian-broadened by ``sigma_kms`` in
    velocity and bin-averaged onto the spectral grid."""
    t = templates()
    vectors = _vectors(t)
    if sigma_kms > 0:
        vectors = gaussian_filter1d(vectors, sigma_kms / t.kms_per_pixel, axis=1, mode="nearest")
    return rebin(t.wave, vectors, 10.0**LOGLAM_EDGES)


def rebin(wave: np.ndarray, flux: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Flux-conserving bin average of f_lambda sampled at ``wave`` into bins with ``edges``."""
    mid = np.concatenate([[wave[0]], 0.5 * (wave[1:] + wave[:-1]), [wave[-1]]])
    cum = np.concatenate(
        [np.zeros(flux.shape[:-1] + (1,)), np.cumsum(flux * np.diff(mid), axis=-1)], axis=-1
    )
    at = np.stack([np.interp(edges, mid, c) for c in cum.reshape(-1, cum.shape[-1])])
    return (np.diff(at, axis=-1) / np.diff(edges)).reshape(flux.shape[:-1] + (len(edges) - 1,))


def line_profiles(sigma_kms: float) -> np.ndarray:
    """[n_lines, 1000] unit-flux Gaussian lines on the spectral grid (erg/s/cm^2/A per unit flux)."""
    edges = 10.0**LOGLAM_EDGES
    sigma = LINE_WAVE[:, None] * sigma_kms / C_KMS
    cdf = 0.5 * (1 + erf((edges[None, :] - LINE_WAVE[:, None]) / (np.sqrt(2) * sigma)))
    return np.diff(cdf, axis=1) / np.diff(edges)[None, :]


def blackbody_colours(temperature: np.ndarray) -> np.ndarray:
    """Band maggies [N, 5] of blackbodies, normalised to 1 in r (colours of stars)."""
    return np.stack([np.interp(temperature, _BB_T, c) for c in _blackbody_table().T], axis=-1)


_BB_T = np.linspace(2500.0, 12000.0, 96)


@functools.lru_cache(maxsize=1)
def _blackbody_table() -> np.ndarray:
    wave = np.linspace(3500.0, 11500.0, 4001)
    x = 1.4387769e8 / (wave[None, :] * _BB_T[:, None])  # hc / (lambda k T), lambda in A
    flux = 1.0 / (wave[None, :] ** 5 * np.expm1(x))
    m = filters().get_ab_maggies(flux / flux.max(), wave)
    m = np.array([m[name] for name in m.colnames]).T
    return m / m[:, R_BAND : R_BAND + 1]
