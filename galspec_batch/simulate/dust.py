"""Dust in the mock galaxies: one extinction curve, three geometries.

Curve: Cardelli, Clayton & Mathis (1989), R_V = 3.1, for stars and gas alike; the geometry makes
the effective (attenuation) curve greyer or steeper.

Geometry, after Charlot & Fall (2000):

* birth clouds: HII regions and the young stars of the arms/clumps sit in their natal clouds, a
  foreground screen (``screen``) of V-band optical depth tau_BC, the same at every inclination.
  The lines see all of it; the young stars' continuum sees ``YOUNG_STARS_IN_CLOUDS`` of it, the
  stellar-to-nebular reddening ratio of Calzetti et al. (2000).
* the diffuse ISM of the disk: stars, gas and dust uniformly mixed in a slab (``slab``; Disney,
  Davies & Phillipps 1989), transmission (1 - exp(-tau)) / tau. Its line-of-sight optical depth is
  the face-on one over the disk's projected axis ratio q (the path through a thin disk grows as
  1/cos i, capped by the disk's intrinsic thickness), so edge-on disks are redder and fainter and
  their lines have a higher Balmer decrement (Driver et al. 2007; Masters et al. 2010; Yip et al.
  2010).
* the bulge sits in the disk's midplane: its far half shines through the whole disk (``behind``),
  transmission (1 + exp(-tau)) / 2 (the bulge attenuation of Tuffs et al. 2004, simplified).

Optical depths are V-band; at wavelength lambda a depth is tau_V * A_lambda / A_V.
"""

from __future__ import annotations

import numpy as np

R_V = 3.1
YOUNG_STARS_IN_CLOUDS = 0.44  # E(B-V)_stars / E(B-V)_gas (Calzetti et al. 2000)
# CCM89 optical polynomials in y = 1/lambda[um] - 1.82, highest power first
_CCM_OPTICAL_A = (0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1.0)
_CCM_OPTICAL_B = (-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0.0)


def extinction_curve(wave: np.ndarray) -> np.ndarray:
    """A_lambda / A_V of Cardelli, Clayton & Mathis (1989) for vacuum wavelengths in A
    (2500 A - 3.3 micron: its infrared, optical and near-UV pieces)."""
    x = 1e4 / np.asarray(wave, dtype=np.float64)
    y = x - 1.82
    uv_a = 1.752 - 0.316 * x - 0.104 / ((x - 4.67) ** 2 + 0.341)
    uv_b = -3.090 + 1.825 * x + 1.206 / ((x - 4.62) ** 2 + 0.263)
    a = np.where(x < 1.1, 0.574 * x**1.61, np.where(x < 3.3, np.polyval(_CCM_OPTICAL_A, y), uv_a))
    b = np.where(x < 1.1, -0.527 * x**1.61, np.where(x < 3.3, np.polyval(_CCM_OPTICAL_B, y), uv_b))
    return a + b / R_V


def transmission(wave: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """Share of the light that gets out, [N, len(wave)] float32, for V-band optical depths
    ``depths`` [N, 3] = (screen, slab, behind) per object (0 = none of that kind: a factor of
    exactly 1)."""
    k = extinction_curve(wave).astype(np.float32)[None, :]
    screen, slab, behind = (depths[:, j : j + 1].astype(np.float32) for j in range(3))
    out = np.ones((len(depths), k.shape[1]), np.float32)
    if screen.any():
        out *= np.exp(-screen * k)
    if slab.any():
        tau = slab * k
        # (1 - exp(-tau)) / tau, written to stay exact as tau -> 0
        out *= np.where(tau > 1e-6, -np.expm1(-tau) / np.maximum(tau, np.float32(1e-6)), 1 - tau / 2)
    if behind.any():
        out *= (1 + np.exp(-behind * k)) / 2
    return out


def depths(tau_bc: np.ndarray, tau_ism: np.ndarray) -> dict[str, np.ndarray]:
    """Per light source, the [N, 3] (screen, slab, behind) V-band optical depths, from the birth
    clouds' ``tau_bc`` and the disk's line-of-sight ``tau_ism``. Sources: the stellar components,
    ``hii`` (HII-region lines), ``dig`` (diffuse ionised gas: in the slab, out of the clouds)."""
    zero = np.zeros_like(tau_bc)
    return {
        "bulge": np.stack([zero, zero, tau_ism], axis=1),
        "disk": np.stack([zero, tau_ism, zero], axis=1),
        "struct": np.stack([YOUNG_STARS_IN_CLOUDS * tau_bc, tau_ism, zero], axis=1),
        "hii": np.stack([tau_bc, tau_ism, zero], axis=1),
        "dig": np.stack([zero, tau_ism, zero], axis=1),
        "point": np.stack([zero, zero, zero], axis=1),  # the AGN
    }
