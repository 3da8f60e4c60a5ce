"""The physical galaxy population of the mock survey, drawn per object and vectorised.

Every random number is a counter-based hash of (seed, object index, stream), so an object's
parameters do not depend on which batch it is drawn in, and a million objects draw in seconds.

The population is a flux-limited sample like the SDSS main sample: redshift peaked near 0.1,
r-band absolute magnitude (after dust) from a Schechter function truncated to 14 < r < 17.77; a
bulge (de Vaucouleurs, old archetypes) and an exponential disk whose young stars sit in blue
structure (spiral arms or clumps). Physical choices, each with its source:

* Quenching: a galaxy is passive (no star formation) with a probability rising with its bulge
  fraction (Kauffmann et al. 2003; Bluck et al. 2014) and its luminosity (mass quenching; Peng et
  al. 2010), giving about 40% with Halpha EW < 3 A as in the SDSS main sample. A share of passive
  galaxies quenched recently: their disk is an A-star-rich continuum (post-starburst; Wild et al.
  2009). Star-forming disks have an activity s in (0, 1] that sets the young structure's share of
  the disk light, the disk's age, and its dust.
* Star formation lives in the structure: the arms/clumps carry the young stars, the HII-region
  lines (Halpha EW ``EW_HII`` against their own continuum, as a ~100 Myr constant star formation
  makes; Leitherer et al. 1999) and the diffuse ionised gas around them (``DIG_SHARE`` of the
  Halpha; Oey et al. 2007). The smooth disk has no star formation of its own, so a fiber sees star
  formation in proportion to the structure's light inside it.
* Continuum diversity: bulges mix old archetypes with younger ones, more so in fainter galaxies
  (downsizing; Gallazzi et al. 2005); disks mix two archetypes around the age their activity sets.
* Dust (see ``dust``): birth clouds and a disk slab whose optical depth grows with luminosity
  (Garn & Best 2010) and with the gas that star formation needs (passive disks: none).
* Mergers (``MERGER_FRACTION``; Darg et al. 2010): tidal tails or shells and often a companion in
  the image (``images``), a central starburst (star formation x ``MERGER_SF_BOOST``; Ellison et al.
  2008, 2013) and a raised AGN probability (x ``MERGER_AGN_BOOST``; Ellison et al. 2011). They are
  never passive.
* Velocity dispersions: see ``kinematics``.

Some bulges host an AGN. A small fraction of objects is anomalous: their spectrum is drawn from a
galaxy of the opposite kind (see ``spectral_params``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy.special import betaincinv, expit, ndtri

from galspec_batch.simulate import kinematics, lines, sed

Z_MIN, Z_MAX, Z_PEAK = 0.01, 0.35, 0.1
R_BRIGHT, R_FAINT = 14.0, 17.77
M_STAR, SCHECHTER_ALPHA = -21.0, -1.1
BULGE_N, DISK_N = 4.0, 1.0
DISK_THICKNESS = 0.15  # intrinsic axis ratio of an edge-on disk
EARLY_FRACTION = 0.3
QUENCH_BT, QUENCH_BT_WIDTH = 0.45, 0.12  # logistic P(passive) in the bulge fraction ...
QUENCH_MAG, QUENCH_MAG_WIDTH = -21.3, 0.8  # ... and in the absolute magnitude
POST_STARBURST_SHARE = 0.05  # of passive galaxies
STRUCT_MAX = 0.35  # young structure's share of the disk's r-band light at activity 1
STRUCT_CAP = 0.7  # the most of a disk's light young structure can hold (merger starbursts)
EW_HII = 300.0  # A, intrinsic Halpha EW of the arms/clumps against their own continuum
DIG_SHARE = 0.3  # share of the star-forming Halpha from diffuse ionised gas
EW_RETIRED, EW_RETIRED_SCATTER = 0.8, 0.25  # A and dex: old stars' (HOLMES) Halpha EW
BULGE_YOUNG_MAX = 0.35  # largest share of intermediate-age light in the faintest bulges
TAU_BC = 0.7  # V-band birth-cloud depth at L* (Charlot & Fall 2000)
TAU_ISM = 0.6  # face-on V-band depth through an L* disk at activity 1
DUST_LUM_SLOPE = 0.4  # depths ~ (L / L*)^slope
MERGER_FRACTION = 0.04
MERGER_SF_BOOST = 2.5
MERGER_AGN_BOOST = 2.5
TIDAL_SHARE = (0.08, 0.25)  # share of a merger's bulge + disk light in tidal features
AGN_BASE, AGN_PER_BT = 0.01, 0.12
ARMS_FRACTION = 0.65  # of star-forming disks outside mergers (the rest: clumps)
N_KIND_STREAMS = 20
N_STREAMS = 24 + N_KIND_STREAMS


@dataclass(frozen=True)
class Galaxies:
    """Per-object physical parameters (arrays of length N)."""

    index: np.ndarray  # draw index (object_id = id offset + index)
    z: np.ndarray
    abs_mag_r: np.ndarray  # rest-frame r-band absolute magnitude of the stellar light after dust
    bulge_frac: np.ndarray  # bulge share of the dust-free rest-frame r-band continuum light
    passive: np.ndarray  # bool: no star formation
    post_starburst: np.ndarray  # bool: passive, recently quenched (A-star-rich disk)
    activity: np.ndarray  # disk star-formation activity s in [0, 1] (0: passive)
    struct_frac: np.ndarray  # young structure's share of the disk's dust-free r-band light
    arms: np.ndarray  # bool: spiral arms (else star-forming clumps)
    merger: np.ndarray  # bool: tidal features / companion and a central starburst
    tidal_frac: np.ndarray  # share of bulge + disk light in tidal features (0 unless merger)
    re_bulge: np.ndarray  # effective radii, arcsec
    re_disk: np.ndarray
    q_bulge: np.ndarray  # axis ratios
    q_disk: np.ndarray
    cos_i: np.ndarray  # disk inclination
    pa: np.ndarray  # disk position angle, radians
    pa_bulge: np.ndarray
    coeff_bulge: np.ndarray  # [N, 5] SED coefficients (unit mean f_lambda over 5400-5600 A)
    coeff_disk: np.ndarray
    coeff_struct: np.ndarray
    ew_hii: np.ndarray  # intrinsic Halpha EW of the structure against its own continuum, A
    hii_ratios: np.ndarray  # [N, n_lines] intrinsic line / Halpha flux of HII regions
    ew_retired: np.ndarray  # Halpha EW of old stars' emission against bulge and disk continuum, A
    retired_ratios: np.ndarray  # [N, n_lines] old stars' LINER-like emission
    tau_bc: np.ndarray  # V-band optical depth of the birth clouds
    tau_ism: np.ndarray  # V-band optical depth through the disk along the line of sight
    sigma_bulge: np.ndarray  # velocity dispersions, km/s
    sigma_disk: np.ndarray
    agn: np.ndarray  # bool
    agn_cont: np.ndarray  # AGN continuum f_lambda(5100 A) / bulge's
    agn_ew_halpha: np.ndarray  # AGN narrow Halpha EW against the bulge continuum, A
    agn_broad: np.ndarray  # broad-line Halpha flux / narrow Halpha flux (0: none)
    agn_ratios: np.ndarray  # [N, n_lines] AGN narrow-line ratios
    anomaly: np.ndarray  # bool: the spectrum comes from another galaxy

    def take(self, rows: np.ndarray) -> Galaxies:
        """The galaxies at ``rows``."""
        return Galaxies(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


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


def quench_probability(bulge_frac: np.ndarray, abs_mag: np.ndarray) -> np.ndarray:
    """P(passive) of a galaxy that is not merging: logistic in bulge fraction and luminosity."""
    return expit((bulge_frac - QUENCH_BT) / QUENCH_BT_WIDTH + (QUENCH_MAG - abs_mag) / QUENCH_MAG_WIDTH)


def draw_galaxies(seed: int, index: np.ndarray, anomaly_rate: float = 0.01) -> Galaxies:
    """Physical parameters of the galaxies with draw indices ``index``."""
    index = np.asarray(index, dtype=np.int64)
    u = uniforms(seed, index, N_STREAMS)
    n = ndtri(u)  # standard normals from the same streams
    z = _inverse_cdf_z()(u[:, 0])
    early = u[:, 1] < EARLY_FRACTION
    bulge_frac = np.where(early, betaincinv(6.0, 2.0, u[:, 2]), betaincinv(1.3, 4.5, u[:, 2]))
    abs_mag = _draw_abs_mag(z, M_STAR - 0.4 * bulge_frac, u[:, 4])
    merger = u[:, 10] < MERGER_FRACTION
    passive = ~merger & (u[:, 3] < quench_probability(bulge_frac, abs_mag))
    star_forming = betaincinv(1.2 + 2.0 * (1 - bulge_frac), 1.0 + 2.0 * bulge_frac, u[:, 11])
    activity = np.where(passive, 0.0, star_forming)

    re_disk_kpc = 3.8 * 10 ** (-0.4 * 0.3 * (abs_mag + 21.0) + 0.15 * n[:, 5])
    re_bulge_kpc = re_disk_kpc * (0.2 + 0.5 * bulge_frac) * 10 ** (0.1 * n[:, 6])
    kpc_to_arcsec = 206264.806 / sed.angular_diameter_distance_kpc(z)
    cos_i = u[:, 7]
    q_disk = np.sqrt(cos_i**2 * (1 - DISK_THICKNESS**2) + DISK_THICKNESS**2)
    pa = np.pi * u[:, 8]
    agn = u[:, 16] < (AGN_BASE + AGN_PER_BT * bulge_frac) * np.where(merger, MERGER_AGN_BOOST, 1.0)
    own = slice(24, 24 + N_KIND_STREAMS)
    post_starburst = passive & (u[:, 14] < POST_STARBURST_SHARE)
    kind = _kind(u[:, own], n[:, own], abs_mag, bulge_frac, activity, post_starburst,
                 np.where(merger, MERGER_SF_BOOST, 1.0), cos_i, q_disk)
    return Galaxies(
        index=index,
        z=z,
        abs_mag_r=abs_mag,
        bulge_frac=bulge_frac,
        passive=passive,
        activity=activity,
        arms=(u[:, 12] < ARMS_FRACTION) & ~merger,
        merger=merger,
        tidal_frac=np.where(merger, TIDAL_SHARE[0] + (TIDAL_SHARE[1] - TIDAL_SHARE[0]) * u[:, 15], 0.0),
        re_bulge=re_bulge_kpc * kpc_to_arcsec,
        re_disk=re_disk_kpc * kpc_to_arcsec,
        q_bulge=0.55 + 0.45 * u[:, 9],
        q_disk=q_disk,
        cos_i=cos_i,
        pa=pa,
        pa_bulge=pa + np.deg2rad(10.0) * n[:, 13],
        agn=agn,
        agn_cont=np.where(agn, 0.03 + 0.2 * u[:, 17], 0.0),
        agn_ew_halpha=np.where(agn, 10 ** (0.6 + 0.3 * n[:, 18]), 0.0),
        agn_broad=np.where(agn & (u[:, 19] < 0.3), 2.0 + 4.0 * u[:, 20], 0.0),
        agn_ratios=lines.agn_ratios(n[:, 21:24]),
        anomaly=draw_anomaly(seed, index, anomaly_rate),
        **kind,
    )


def _kind(u: np.ndarray, n: np.ndarray, abs_mag: np.ndarray, bulge_frac: np.ndarray, activity: np.ndarray,
          post_starburst: np.ndarray, sf_boost: np.ndarray, cos_i: np.ndarray, q_disk: np.ndarray) -> dict:
    """What follows from a galaxy's kind: SED mixtures, young structure, lines, dust and
    kinematics (``u``, ``n``: [N, N_KIND_STREAMS] uniforms and normals of the caller's streams)."""
    t = sed.templates()
    faint = np.clip((abs_mag - (M_STAR - 2.0)) / 4.0, 0.0, 1.0)
    young_share = (BULGE_YOUNG_MAX * faint * u[:, 2])[:, None]
    coeff_bulge = (1 - young_share) * t.archetype(0.70 + 0.30 * u[:, 0]) + young_share * t.archetype(
        0.30 + 0.35 * u[:, 1])
    age = np.clip(0.08 + 0.62 * (1 - activity) + 0.06 * n[:, 3], 0.0, 1.0)
    mix = u[:, 5][:, None]
    coeff_disk = (1 - mix) * t.archetype(age) + mix * t.archetype(np.clip(age + 0.1 * n[:, 4], 0.0, 1.0))
    coeff_disk = np.where(post_starburst[:, None], t.post_starburst(u[:, 5]), coeff_disk)
    lum_dust = 10 ** (-0.4 * DUST_LUM_SLOPE * (abs_mag - M_STAR))
    sigma_bulge, sigma_disk = kinematics.dispersions(abs_mag, cos_i, n[:, 17:19])
    return {
        "post_starburst": post_starburst,
        "struct_frac": np.minimum(STRUCT_MAX * activity * sf_boost * 10 ** (0.1 * n[:, 7]), STRUCT_CAP),
        "coeff_bulge": coeff_bulge,
        "coeff_disk": coeff_disk,
        "coeff_struct": t.archetype(0.15 * u[:, 6]),
        "ew_hii": EW_HII * 10 ** (0.1 * n[:, 8]),
        "hii_ratios": lines.hii_ratios(abs_mag, M_STAR, n[:, 9:13]),
        "retired_ratios": lines.retired_ratios(n[:, 13:15]),
        "ew_retired": EW_RETIRED * 10 ** (EW_RETIRED_SCATTER * n[:, 19]),
        "tau_bc": np.where(activity > 0, TAU_BC * lum_dust * 10 ** (0.15 * n[:, 15]), 0.0),
        "tau_ism": TAU_ISM * lum_dust * np.sqrt(activity) * 10 ** (0.15 * n[:, 16]) / q_disk,
        "sigma_bulge": sigma_bulge,
        "sigma_disk": sigma_disk,
    }


def spectral_params(seed: int, gal: Galaxies) -> Galaxies:
    """The galaxies whose light makes the fiber spectra: the same as ``gal`` except for
    anomalies, whose spectrum comes from a galaxy of the opposite kind at the same redshift
    (a passive spectrum, half of them with an AGN, under a star-forming image; a star-forming one
    under a bulge-dominated or passive image); geometry and dust column stay those of the image."""
    if not gal.anomaly.any():
        return gal
    rows = np.flatnonzero(gal.anomaly)
    u = uniforms(seed, gal.index[rows], 6 + N_KIND_STREAMS, salt=11)
    n = ndtri(u)
    passive_image = (gal.bulge_frac[rows] > 0.5) | gal.passive[rows]
    bt = np.where(passive_image, 0.05 + 0.15 * u[:, 0], 0.75 + 0.2 * u[:, 0])
    act = np.where(passive_image, 0.75 + 0.25 * u[:, 1], 0.0)
    agn = ~passive_image & (u[:, 2] < 0.5)
    new = {
        "bulge_frac": bt,
        "activity": act,
        "passive": ~passive_image,
        "agn": agn,
        "agn_cont": np.where(agn, 0.1 + 0.2 * u[:, 3], 0.0),
        "agn_ew_halpha": np.where(agn, 10 ** (0.9 + 0.2 * n[:, 4]), 0.0),
        "agn_broad": np.where(agn & (u[:, 5] < 0.01), 4.0, 0.0),
        **_kind(u[:, 6:], n[:, 6:], gal.abs_mag_r[rows], bt, act, np.zeros(len(rows), bool),
                np.ones(len(rows)), gal.cos_i[rows], gal.q_disk[rows]),
    }
    out = {name: getattr(gal, name).copy() for name in new}
    for name, values in new.items():
        out[name][rows] = values
    return replace(gal, **out)


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
