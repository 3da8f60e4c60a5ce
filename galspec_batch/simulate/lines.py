"""Intrinsic (dust-free) emission-line ratios, line / Halpha flux, of the mock's four kinds of
ionised gas; dust is applied per light source in ``fiber.light``.

* HII regions (in the arms and clumps): Case B Balmer lines (Halpha/Hbeta = 2.86, Hgamma/Hbeta =
  0.468; Osterbrock & Ferland 2006); [NII]/Halpha rising with luminosity as the gas-phase
  metallicity does (the mass-metallicity relation, Tremonti et al. 2004), and [OIII]/Hbeta on the
  star-forming BPT sequence just below the Kauffmann et al. (2003) demarcation, so metal-poor
  (faint) galaxies have strong [OIII].
* Diffuse ionised gas (in the smooth disk, powered by the same young stars): the HII ratios with
  [NII] and [SII] enhanced (Haffner et al. 2009).
* Retired (HOLMES) emission of old stars: weak LINER-like lines, Halpha EW below 3 A (Stasinska et
  al. 2008; Cid Fernandes et al. 2011).
* AGN narrow lines (Seyfert/LINER): strong [NII], [OIII] and [OII].
"""

from __future__ import annotations

import numpy as np

from galspec_batch.simulate import sed

CASE_B_HALPHA_HBETA = 2.86
CASE_B_HGAMMA_HBETA = 0.468
N2_AT_MSTAR = -0.45  # log [NII]6585/Halpha of HII regions at M_r = M*
N2_PER_MAG = -0.1  # brighter (more metal-rich) galaxies: higher [NII]/Halpha
N2_MAX = -0.3  # the metal-rich end of the star-forming sequence
BPT_OFFSET = 0.2  # dex below the Kauffmann et al. (2003) line
DIG_LOW_IONISATION = 1.5  # [NII] and [SII] relative to HII regions


def hii_ratios(abs_mag: np.ndarray, m_star: float, n: np.ndarray) -> np.ndarray:
    """Line ratios [N, n_lines] of HII regions; ``n`` [N, 4] standard normals."""
    log_n2 = np.minimum(N2_AT_MSTAR + N2_PER_MAG * (abs_mag - m_star) + 0.08 * n[:, 0], N2_MAX)
    log_o3 = 0.61 / (log_n2 - 0.05) + 1.3 - BPT_OFFSET + 0.1 * n[:, 1]
    hbeta = np.full_like(abs_mag, 1.0 / CASE_B_HALPHA_HBETA)
    oii = hbeta * 10 ** (0.3 + 0.12 * n[:, 2])
    sii = 0.3 * 10 ** (0.08 * n[:, 3])
    return _ratios(hbeta, oii, hbeta * 10**log_o3, 10**log_n2, sii)


def dig_ratios(hii: np.ndarray) -> np.ndarray:
    """Diffuse ionised gas: the HII-region ratios with the low-ionisation lines enhanced."""
    out = hii.copy()
    low = [sed.LINE_NAMES.index(name) for name in ("NII_6550", "NII_6585", "SII_6718", "SII_6733")]
    out[:, low] *= DIG_LOW_IONISATION
    return out


def retired_ratios(n: np.ndarray) -> np.ndarray:
    """Retired-galaxy (HOLMES) LINER-like ratios; ``n`` [N, 2] standard normals."""
    hbeta = np.full(len(n), 1.0 / 3.1)
    nii = 10 ** (0.1 + 0.1 * n[:, 0])
    return _ratios(hbeta, 2.5 * hbeta, hbeta * 10 ** (0.1 * n[:, 1]), nii, 0.8 * nii)


def agn_ratios(n: np.ndarray) -> np.ndarray:
    """Seyfert / LINER narrow-line ratios; ``n`` [N, 3] standard normals."""
    hbeta = 1.0 / (3.1 + 0.5 * np.abs(n[:, 0]))
    nii = 10 ** (0.05 + 0.12 * n[:, 1])
    oiii = hbeta * 10 ** (0.6 + 0.25 * n[:, 2])
    oii = hbeta * 10 ** (0.5 + 0.1 * n[:, 0])
    return _ratios(hbeta, oii, oiii, nii, 0.5 * nii)


def _ratios(hbeta, oii, oiii, nii, sii) -> np.ndarray:
    r = {
        "OII_3727": 0.45 * oii, "OII_3730": 0.55 * oii, "Hgamma": CASE_B_HGAMMA_HBETA * hbeta, "Hbeta": hbeta,
        "OIII_4960": oiii / 2.98, "OIII_5008": oiii, "NII_6550": nii / 2.94,
        "Halpha": np.ones_like(hbeta), "NII_6585": nii, "SII_6718": 0.55 * sii, "SII_6733": 0.45 * sii,
    }
    return np.stack([r[name] for name in sed.LINE_NAMES], axis=-1)
