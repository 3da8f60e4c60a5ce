"""Stellar and gas velocity dispersions of the mock galaxies and the broadening they cause.

* Bulges follow the Faber & Jackson (1976) relation L ~ sigma^4, normalised to Bernardi et al.
  (2003): sigma = 170 km/s at M_r = -21.5, 0.08 dex scatter.
* Disks: what a 3" fiber sees of a disk is its vertical dispersion plus the unresolved part of its
  rotation, V_rot sin(i), with V_rot from the r-band Tully-Fisher relation (L ~ V^3.4, 200 km/s at
  M_r = -21; Pizagno et al. 2007). Edge-on disks have broader lines.
* A component's stars and its ionised gas share one dispersion (integrated gas and stellar
  dispersions agree on average; Bezanson et al. 2018); the AGN narrow-line region has the bulge's
  (Nelson & Whittle 1996).

The archetypes already carry their own line width (about 50 km/s as estimated from their Fourier
power), which stands in for the SDSS instrumental resolution: the stellar continuum is broadened
by the stellar dispersion alone, while emission lines get sqrt(sigma^2 + sigma_instrument^2) with
the SDSS value (about 70 km/s; Smee et al. 2013). ``truth_sigma_v`` is the light-weighted
dispersion of bulge and disk, sqrt(B/T sigma_b^2 + (1 - B/T) sigma_d^2).

Per-object broadening is interpolated linearly between spectra precomputed at dispersion nodes
25 km/s apart, so a batch costs two matrix products per node.
"""

from __future__ import annotations

import functools

import numpy as np

from galspec_batch.simulate import sed

FJ_SIGMA, FJ_MAG, FJ_SLOPE, FJ_SCATTER = 170.0, -21.5, -0.1, 0.08  # km/s, mag, dex/mag, dex
TF_VROT, TF_MAG, TF_SLOPE, TF_SCATTER = 200.0, -21.0, -0.118, 0.05
DISK_SIGMA_Z = 40.0  # km/s, vertical dispersion of the disk light in the fiber
ROTATION_IN_FIBER = 0.4  # share of V_rot sin(i) that adds in quadrature inside 3"
SIGMA_INSTRUMENT = 70.0  # km/s, SDSS spectrographs
SIGMA_NODES = np.arange(0.0, 501.0, 25.0)  # km/s


def dispersions(abs_mag: np.ndarray, cos_i: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bulge, disk) velocity dispersions in km/s; ``n`` [N, 2] standard normals."""
    sigma_bulge = FJ_SIGMA * 10 ** (FJ_SLOPE * (abs_mag - FJ_MAG) + FJ_SCATTER * n[:, 0])
    v_rot = TF_VROT * 10 ** (TF_SLOPE * (abs_mag - TF_MAG) + TF_SCATTER * n[:, 1])
    sin_i = np.sqrt(1.0 - cos_i**2)
    sigma_disk = np.hypot(DISK_SIGMA_Z, ROTATION_IN_FIBER * v_rot * sin_i)
    return np.clip(sigma_bulge, 0, SIGMA_NODES[-1]), np.clip(sigma_disk, 0, SIGMA_NODES[-1])


def fiber_dispersion(bulge_frac: np.ndarray, sigma_bulge: np.ndarray, sigma_disk: np.ndarray) -> np.ndarray:
    """The light-weighted dispersion of a galaxy (km/s)."""
    return np.sqrt(bulge_frac * sigma_bulge**2 + (1 - bulge_frac) * sigma_disk**2)


def line_sigma(sigma: np.ndarray) -> np.ndarray:
    """Observed emission-line width (km/s) of gas with dispersion ``sigma``."""
    return np.hypot(sigma, SIGMA_INSTRUMENT)


def continuum(coeff: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Spectra [N, 1000] of SEDs with coefficients [N, 6], broadened by ``sigma`` (km/s)."""
    return _at_nodes(coeff, sigma, _basis_nodes())


def emission(line_flux: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Spectra [N, 1000] of narrow lines (fluxes [N, n_lines]) with widths ``sigma`` (km/s)."""
    return _at_nodes(line_flux, sigma, _profile_nodes())


def _at_nodes(weights: np.ndarray, sigma: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """sum_k weights[n, k] * shape_k at sigma[n], linear between the nodes' shapes [n_nodes, K, P]."""
    pos = np.clip(np.asarray(sigma) / (SIGMA_NODES[1] - SIGMA_NODES[0]), 0, len(SIGMA_NODES) - 1.000001)
    lo = pos.astype(int)
    frac = pos - lo
    out = np.zeros((len(weights), nodes.shape[2]))
    for k in np.unique(np.concatenate([lo, lo + 1])):
        share = np.where(lo == k, 1 - frac, 0.0) + np.where(lo + 1 == k, frac, 0.0)
        rows = np.flatnonzero(share > 0)
        out[rows] += share[rows, None] * sed.rowwise(weights[rows], nodes[k])
    return out


@functools.lru_cache(maxsize=1)
def _basis_nodes() -> np.ndarray:
    return np.stack([sed.basis_on_grid(s) for s in SIGMA_NODES])


@functools.lru_cache(maxsize=1)
def _profile_nodes() -> np.ndarray:
    return np.stack([sed.line_profiles(max(s, 1.0)) for s in SIGMA_NODES])
