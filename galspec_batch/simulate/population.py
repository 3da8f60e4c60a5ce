"""The physical galaxy population of the mock survey, drawn per object and vectorised.

Every random number is a counter-based hash of (seed, object index, stream), so an object's
parameters do not depend on which batch it is drawn in, and a million objects draw in seconds.

The population is a flux-limited sample like the SDSS main sample: redshift peaked near 0.1,
r-band absolute magnitude from a Schechter function truncated to 14 < r < 17.77; a bulge
(de Vaucouleurs, old red archetype) and an exponential disk (star-forming archetype) whose
star-formation activity ``s`` in [0, 1] sets the disk's age, its blue structure, and its
emission-line strength. Some bulges host an AGN. A small fraction of objects is anomalous: their
spectrum is drawn from a galaxy of the opposite kind (see ``spectral_params``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import betaincinv, ndtri

from galspec_batch.simulate import sed

Z_MIN, Z_MAX, Z_PEAK = 0.01, 0.35, 0.1
R_BRIGHT, R_FAINT = 14.0, 17.77
M_STAR, SCHECHTER_ALPHA = -21.0, -1.1
BULGE_N, DISK_N = 4.0, 1.0


@dataclass(frozen=True)
class Galaxies:
    """Per-object physical parameters (arrays of length N)."""

    index: np.ndarray  # draw index (object_id = id offset + index)
    z: np.ndarray
    abs_mag_r: np.ndarray  # rest-frame r-band absolute magnitude of the stellar continuum
    bulge_frac: np.ndarray  # bulge share of the rest-frame r-band continuum light
    activity: np.ndarray  # disk star-formation activity s in [0, 1]
    struct_frac: np.ndarray  # share of the disk light in blue structure (arms or clumps)
    arms: np.ndarray  # bool: spiral arms (else star-forming clumps)
    re_bulge: np.ndarray  # effective radii, arcsec
    re_disk: np.ndarray
    q_bulge: np.ndarray  # axis ratios
    q_disk: np.ndarray
    pa: np.ndarray  # disk position angle, radians
    pa_bulge: np.ndarray
    coeff_bulge: np.ndarray  # [N, 5] SED coefficients (unit mean f_lambda over 5400-5600 A)
    coeff_disk: np.ndarray
    coeff_struct: np.ndarray
    ew_halpha_disk: np.ndarray  # rest-frame Halpha equivalent width of the smooth disk, A
    line_ratios: np.ndarray  # [N, n_lines] line flux / Halpha flux (star formation)
    agn: np.ndarray  # bool
    agn_cont: np.ndarray  # AGN continuum f_lambda(5100 A) / bulge's
    agn_ew_halpha: np.ndarray  # AGN narrow Halpha EW against the bulge continuum, A
    agn_broad: np.ndarray  # broad-line Halpha flux / narrow Halpha flux (0: none)
    agn_ratios: np.ndarray  # [N, n_lines] AGN narrow-line ratios
    anomaly: np.ndarray  # bool: the spectrum comes from another galaxy


def uniforms(seed: int, index: np.ndarray, n_streams: int, salt: int = 0) -> np.ndarray:
    """[N, n_streams] uniforms in (0, 1), a pure function of (seed, index, stream, salt)."""
    idx = np.asarray(index, dtype=np.uint64)[:, None]
    stream = np.arange(n_streams, dtype=np.uint64)[None, :] + np.uint64(salt) * np.uint64(1 << 20)
    key = _splitmix(np.uint64(seed % (1 << 63)) + np.uint64(0x632BE59BD9B4E019))
    x = _splitmix(_splitmix(key ^ idx) ^ (stream * np.uint64(0xD1B54A32D192ED03)))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def draw_anomaly(seed: int, index: np.ndarray, rate: float) -> np.ndarray:
    """Which objects get a spectrum that does not fit their image (cheap; used by the tests)."""
    return uniforms(seed, index, 1, salt=7)[:, 0] < rate


def draw_galaxies(seed: int, index: np.ndarray, anomaly_rate: float = 0.01) -> Galaxies:
    """Physical parameters of the galaxies with draw indices ``index``."""
    index = np.asarray(index, dtype=np.int64)
    u = uniforms(seed, index, 32)
    n = ndtri(u)  # standard normals from the same streams
    z = _inverse_cdf_z()(u[:, 0])
    early = u[:, 1] < 0.3
    bulge_frac = np.where(early, betaincinv(6.0, 2.0, u[:, 2]), betaincinv(1.3, 4.5, u[:, 2]))
    activity = betaincinv(0.6 + 3.0 * (1 - bulge_frac), 0.8 + 4.0 * bulge_frac, u[:, 3])
    abs_mag = _draw_abs_mag(z, M_STAR - 0.4 * bulge_frac, u[:, 4])

    re_disk_kpc = 3.8 * 10 ** (-0.4 * 0.3 * (abs_mag + 21.0) + 0.15 * n[:, 5])
    re_bulge_kpc = re_disk_kpc * (0.2 + 0.5 * bulge_frac) * 10 ** (0.1 * n[:, 6])
    kpc_to_arcsec = 206264.806 / sed.angular_diameter_distance_kpc(z)
    cos_i = u[:, 7]
    q_disk = np.sqrt(cos_i**2 * (1 - 0.15**2) + 0.15**2)
    pa = np.pi * u[:, 8]

    t = sed.templates()
    q_d = np.clip(0.08 + 0.62 * (1 - activity) + 0.04 * n[:, 10], 0.06, 0.95)
    line_ratios = _sf_line_ratios(activity, n[:, 14:18], u[:, 18])
    agn = u[:, 19] < 0.01 + 0.12 * bulge_frac
    return Galaxies(
        index=index,
        z=z,
        abs_mag_r=abs_mag,
        bulge_frac=bulge_frac,
        activity=activity,
        struct_frac=(0.03 + 0.22 * activity) * (0.6 + 0.8 * u[:, 11]),
        arms=u[:, 12] < 0.65,
        re_bulge=re_bulge_kpc * kpc_to_arcsec,
        re_disk=re_disk_kpc * kpc_to_arcsec,
        q_bulge=0.55 + 0.45 * u[:, 9],
        q_disk=q_disk,
        pa=pa,
        pa_bulge=pa + np.deg2rad(10.0) * n[:, 13],
        coeff_bulge=t.archetype(0.70 + 0.3 * u[:, 20]),
        coeff_disk=t.archetype(q_d),
        coeff_struct=t.archetype(0.05 + 0.1 * u[:, 21]),
        ew_halpha_disk=(1.0 + 90.0 * activity**1.5) * 10 ** (0.1 * n[:, 22]),
        line_ratios=line_ratios,
        agn=agn,
        agn_cont=np.where(agn, 0.03 + 0.2 * u[:, 23], 0.0),
        agn_ew_halpha=np.where(agn, 10 ** (0.6 + 0.3 * n[:, 24]), 0.0),
        agn_broad=np.where(agn & (u[:, 25] < 0.3), 2.0 + 4.0 * u[:, 26], 0.0),
        agn_ratios=_agn_line_ratios(n[:, 27:30]),
        anomaly=draw_anomaly(seed, index, anomaly_rate),
    )


def spectral_params(seed: int, gal: Galaxies) -> Galaxies:
    """The galaxies whose light makes the fiber spectra: the same as ``gal`` except for
    anomalies, whose spectrum comes from a galaxy of the opposite kind at the same redshift
    (a passive spectrum under a star-forming image, or a star-forming or AGN one under a
    bulge-dominated image); geometry stays that of the image."""
    if not gal.anomaly.any():
        return gal
    rows = np.flatnonzero(gal.anomaly)
    u = uniforms(seed, gal.index[rows], 8, salt=11)
    n = ndtri(u)
    t = sed.templates()
    passive_image = (gal.bulge_frac[rows] > 0.5) | (gal.activity[rows] < 0.3)
    bt = np.where(passive_image, 0.05 + 0.15 * u[:, 0], 0.75 + 0.2 * u[:, 0])
    act = np.where(passive_image, 0.75 + 0.25 * u[:, 1], 0.02 * u[:, 1])
    agn = ~passive_image & (u[:, 2] < 0.5)
    new = {
        "bulge_frac": bt,
        "activity": act,
        "coeff_disk": t.archetype(np.clip(0.08 + 0.62 * (1 - act) + 0.04 * n[:, 3], 0.06, 0.95)),
        "coeff_bulge": t.archetype(0.70 + 0.3 * u[:, 4]),
        "ew_halpha_disk": (1.0 + 90.0 * act**1.5) * 10 ** (0.1 * n[:, 5]),
        "line_ratios": _sf_line_ratios(act, n[:, [5, 6, 7, 3]], u[:, 6]),
        "agn": agn,
        "agn_cont": np.where(agn, 0.1 + 0.2 * u[:, 7], 0.0),
        "agn_ew_halpha": np.where(agn, 10 ** (0.9 + 0.2 * n[:, 6]), 0.0),
        "agn_broad": np.where(agn & (u[:, 1] < 0.01), 4.0, 0.0),
    }
    out = {name: getattr(gal, name).copy() for name in new}
    for name, values in new.items():
        out[name][rows] = values
    return replace(gal, **out)


def _sf_line_ratios(activity: np.ndarray, n: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Line / Halpha flux ratios of HII regions: more [OIII] and less [NII] for younger disks."""
    balmer_dec = 3.0 + 2.0 * u * (1.2 - activity)  # dust: Halpha/Hbeta observed
    hbeta = 1.0 / balmer_dec
    nii = 10 ** (-0.35 - 0.3 * activity + 0.08 * n[:, 0])
    oiii = hbeta * 10 ** (-0.5 + 0.8 * activity + 0.15 * n[:, 1])
    oii = hbeta * 10 ** (0.3 + 0.12 * n[:, 2])
    sii = 0.3 * 10 ** (0.08 * n[:, 3])
    return _ratios(hbeta, oii, oiii, nii, sii)


def _agn_line_ratios(n: np.ndarray) -> np.ndarray:
    """Seyfert / LINER narrow-line ratios: strong [NII], [OIII] and [OII]."""
    hbeta = 1.0 / (3.1 + 0.5 * np.abs(n[:, 0]))
    nii = 10 ** (0.05 + 0.12 * n[:, 1])
    oiii = hbeta * 10 ** (0.6 + 0.25 * n[:, 2])
    oii = hbeta * 10 ** (0.5 + 0.1 * n[:, 0])
    return _ratios(hbeta, oii, oiii, nii, 0.5 * nii)


def _ratios(hbeta, oii, oiii, nii, sii) -> np.ndarray:
    r = {
        "OII_3727": 0.45 * oii, "OII_3730": 0.55 * oii, "Hgamma": 0.47 * hbeta, "Hbeta": hbeta,
        "OIII_4960": oiii / 2.98, "OIII_5008": oiii, "NII_6550": nii / 2.94,
        "Halpha": np.ones_like(hbeta), "NII_6585": nii, "SII_6718": 0.55 * sii, "SII_6733": 0.45 * sii,
    }
    return np.stack([r[name] for name in sed.LINE_NAMES], axis=-1)


@functools.lru_cache(maxsize=1)
def _inverse_cdf_z():
    """Inverse CDF of p(z) ~ z^2 exp(-(z/z0)^1.5) on [Z_MIN, Z_MAX], peaked at Z_PEAK."""
    z0 = Z_PEAK / (2 / 1.5) ** (1 / 1.5)
    grid = np.linspace(Z_MIN, Z_MAX, 4001)
    cdf = np.cumsum(grid**2 * np.exp(-((grid / z0) ** 1.5)))
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    return lambda u: np.interp(u, cdf, grid)


@functools.lru_cache(maxsize=1)
def _schechter_log_cdf() -> tuple[np.ndarray, np.ndarray]:
    """log of the cumulative Schechter function from the bright end, in dM = M - M*."""
    dm = np.linspace(-7.0, 8.0, 6001)
    x = 10 ** (-0.4 * dm)
    phi = x ** (SCHECHTER_ALPHA + 1) * np.exp(-x)
    cum = np.cumsum(phi) * (dm[1] - dm[0])
    return dm, np.log(np.maximum(cum, 1e-300))


def _draw_abs_mag(z: np.ndarray, m_star: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Absolute magnitudes from the Schechter function truncated to the sample's r limits."""
    dm, log_cdf = _schechter_log_cdf()
    dist_mod = 5 * np.log10(sed.luminosity_distance_mpc(z) * 1e5)
    kcorr = 0.8 * z  # rough mean r-band K-correction; the catalogue's true magnitudes come later
    lo = np.clip(R_BRIGHT - dist_mod - kcorr - m_star, dm[0], dm[-1])
    hi = np.clip(R_FAINT - dist_mod - kcorr - m_star, dm[0], dm[-1])
    c_lo, c_hi = np.interp(lo, dm, log_cdf), np.interp(hi, dm, log_cdf)
    target = c_hi + np.log(u + (1 - u) * np.exp(c_lo - c_hi))
    return m_star + np.interp(target, log_cdf, dm)
