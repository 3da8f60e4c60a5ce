"""Light of each galaxy component (band fluxes for the images) and the 3" fiber spectrum.

Each component's dust-free SED is scaled so the galaxy has its bulge fraction (of dust-free light)
and its absolute magnitude (of the light after dust), then attenuated per its dust geometry
(``dust``). The arms/clumps carry all the star formation's lines: their HII regions' and the
diffuse ionised gas those leak photons to, which stays within ~1 kpc of them (Zurita et al. 2000),
below the images' resolution. Bulge and disk have a weak retired-galaxy emission, the point source
the AGN lines. So the fiber sees star formation in proportion to the structure's light inside it.

The fiber spectrum is the bulge, disk and structure spectra (stars broadened by their velocity
dispersion, lines by the gas's; see ``kinematics``) weighted by each component's light inside the
fiber, plus the AGN, on the rest-frame grid of the paper, with SDSS-like noise given as inverse
variance. Pixels outside the observed 3800-9200 A range of an SDSS spectrograph get ivar = 0 (and
flux 0). Normalisation, as for real spectra from ``ingest-spectra``: flux divided by its mean over
the valid (ivar > 0) pixels, ivar multiplied by the square of that mean. That mean is returned as
``norm`` in SDSS's unit (``NORM_UNIT``) of the rest-frame flux density the fiber sees, (1+z) times
the observed f_lambda: the 10-pc spectrum times the distance dimming (10 pc / D_L)^2.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import astropy.units as u
import numpy as np
from scipy.special import ndtri

from galspec_batch.columns import NORM_UNIT
from galspec_batch.simulate import dust, kinematics, lines, sed
from galspec_batch.simulate.images import Components
from galspec_batch.simulate.population import DIG_SHARE, Galaxies, uniforms
from galspec_batch.spectra import WAVE

COMPONENTS = ("bulge", "disk", "struct", "point")
OBSERVED_RANGE = (3800.0, 9200.0)  # A, SDSS spectrographs
HALPHA_WINDOW = (6500.0, 6630.0)  # A, the continuum under Halpha
V_WINDOW = (5450.0, 5550.0)  # A, the V band's centre, for A_V
_HALPHA = sed.LINE_NAMES.index("Halpha")
_HBETA = sed.LINE_NAMES.index("Hbeta")
_NORM_SCALE = u.Unit(NORM_UNIT).to(u.erg / u.s / u.cm**2 / u.AA)  # 1e-17: the f_lambda of one NORM_UNIT
_SKY_LINES = np.array([5578.5, 5891.6, 6301.7, 6365.5, 7341.0, 7794.1, 7993.3, 8344.6, 8399.2, 8430.2,
                       8761.3, 8827.1, 8885.8, 8919.6, 8958.1, 9001.4, 9037.9, 9102.0])
_SKY_AMPS = np.array([6.0, 3.0, 3.0, 1.5, 1.5, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 4.0, 3.0, 3.0, 4.0, 3.0, 3.0,
                      3.0])


@dataclass(frozen=True)
class Light:
    """Per-component light at 10 pc (rest frame), arrays over N."""

    coeff: dict[str, np.ndarray]  # component -> [N, 6] dust-free SED coefficients (6th: AGN power law)
    depths: dict[str, np.ndarray]  # component -> [N, 3] dust optical depths (see dust.transmission)
    sigma: dict[str, np.ndarray]  # component -> [N] velocity dispersion of its stars and gas, km/s
    lines: dict[str, np.ndarray]  # component -> [N, n_lines] narrow-line fluxes after dust
    broad: np.ndarray  # [N, n_lines] broad-line fluxes (AGN)
    sf_halpha: np.ndarray  # [N] star-forming (HII + diffuse gas) Halpha flux after dust
    av: np.ndarray  # [N] V-band attenuation of the galaxy's stellar light, mag

    def take(self, rows: np.ndarray) -> Light:
        """The light of the galaxies at ``rows``."""
        def pick(value):
            return {k: v[rows] for k, v in value.items()} if isinstance(value, dict) else value[rows]

        return Light(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})


def light(gal: Galaxies) -> Light:
    """Scale each component so the galaxy has its bulge fraction and, after dust, its absolute
    magnitude, and attach its emission lines."""
    grid = sed.band_grid()
    depths = dust.depths(gal.tau_bc, gal.tau_ism)
    disk_share = 1 - gal.bulge_frac
    parts = {
        "bulge": (gal.coeff_bulge, gal.bulge_frac),
        "disk": (gal.coeff_disk, disk_share * (1 - gal.struct_frac)),
        "struct": (gal.coeff_struct, disk_share * gal.struct_frac),
    }
    rest_r, kept = {}, {}
    r_bins = grid.seen[sed.R_BAND]
    for name, (c, _) in parts.items():
        rest = sed.rowwise(c, grid.basis[:5, r_bins])
        rest_r[name] = sed.rest_r_maggies(c)
        kept[name] = sed.rowwise(rest * dust.transmission(grid.wave[r_bins], depths[name]),
                                 grid.weight[r_bins, sed.R_BAND]) / rest_r[name]
    scale = 10 ** (-0.4 * gal.abs_mag_r) / sum(share * kept[name] for name, (_, share) in parts.items())
    coeff = {name: np.column_stack([c * (scale * share / rest_r[name])[:, None], np.zeros(len(c))])
             for name, (c, share) in parts.items()}
    coeff["point"] = np.zeros_like(coeff["bulge"])

    t = sed.templates()
    cont_halpha = {name: sed.rowwise(coeff[name][:, :5], _basis_mean(t, *HALPHA_WINDOW)) for name in parts}
    through = {src: dust.transmission(sed.LINE_WAVE, depths[src]) for src in ("hii", "dig", "bulge", "disk")}
    hii_halpha = gal.ew_hii * cont_halpha["struct"]
    dig_halpha = hii_halpha * DIG_SHARE / (1 - DIG_SHARE)
    retired = {name: (gal.ew_retired * cont_halpha[name])[:, None] * gal.retired_ratios * through[name]
               for name in ("bulge", "disk")}
    agn_halpha = gal.agn_ew_halpha * cont_halpha["bulge"]
    coeff["point"][:, 5] = gal.agn_cont * sed.rowwise(coeff["bulge"][:, :5], _basis_mean(t, 5050.0, 5150.0))
    line_flux = {
        "bulge": retired["bulge"],
        "disk": retired["disk"],
        "struct": hii_halpha[:, None] * gal.hii_ratios * through["hii"]
        + dig_halpha[:, None] * lines.dig_ratios(gal.hii_ratios) * through["dig"],
        "point": agn_halpha[:, None] * gal.agn_ratios,
    }
    broad = np.zeros_like(line_flux["disk"])
    broad[:, _HALPHA] = gal.agn_broad * agn_halpha
    broad[:, _HBETA] = broad[:, _HALPHA] / 3.1

    at_v = {name: sed.rowwise(coeff[name][:, :5], _basis_mean(t, *V_WINDOW)) for name in parts}
    v_wave = np.array([np.mean(V_WINDOW)])
    intrinsic = sum(at_v.values())
    observed = sum(at_v[name] * dust.transmission(v_wave, depths[name])[:, 0] for name in parts)
    return Light(
        coeff=coeff,
        depths={name: depths[name] for name in COMPONENTS},
        sigma={"bulge": gal.sigma_bulge, "disk": gal.sigma_disk, "struct": gal.sigma_disk,
               "point": gal.sigma_bulge},
        lines=line_flux,
        broad=broad,
        sf_halpha=hii_halpha * through["hii"][:, _HALPHA] + dig_halpha * through["dig"][:, _HALPHA],
        av=-2.5 * np.log10(observed / intrinsic),
    )


def _basis_mean(t: sed.Templates, lo: float, hi: float) -> np.ndarray:
    inside = (t.wave >= lo) & (t.wave <= hi)
    return t.basis[:, inside].mean(axis=1)


def band_components(gal: Galaxies, lt: Light) -> Components:
    """Observed grizy fluxes (nanomaggies) of each component after dust, lines included."""
    grid = sed.band_grid()
    dimming = sed.distance_dimming(gal.z)[:, None]
    out = {}
    for name in COMPONENTS:
        rest = sed.rowwise(lt.coeff[name], grid.basis) * dust.transmission(grid.wave, lt.depths[name])
        line_flux = lt.lines[name] + (lt.broad if name == "point" else 0.0)
        out[name] = 1e9 * (sed.band_maggies(rest, gal.z) * dimming + sed.line_band_fluxes(line_flux, gal.z))
    return Components(**out)


def star_formation_ew(lt: Light) -> np.ndarray:
    """Galaxy-integrated Halpha equivalent width from star formation (rest frame, A, lines and
    continuum after dust): the ``truth_sfr`` proxy (a specific star-formation rate indicator)."""
    at_halpha = _basis_mean(sed.templates(), *HALPHA_WINDOW)
    halpha = np.array([sed.LINES["Halpha"]])
    cont = sum(sed.rowwise(lt.coeff[c][:, :5], at_halpha) * dust.transmission(halpha, lt.depths[c])[:, 0]
               for c in ("bulge", "disk", "struct"))
    return lt.sf_halpha / cont


def model_spectra(gal: Galaxies, lt: Light, fiber_frac: np.ndarray) -> np.ndarray:
    """Noise-free rest-frame spectra [N, 1000] (10-pc f_lambda) seen by the fiber;
    ``fiber_frac`` [N, 4]: share of bulge, disk, structure and AGN light inside it."""
    flux = np.zeros((len(gal.z), len(WAVE)))
    for k, name in enumerate(COMPONENTS):
        comp = kinematics.continuum(lt.coeff[name], lt.sigma[name]) * dust.transmission(WAVE, lt.depths[name])
        comp += kinematics.emission(lt.lines[name], kinematics.line_sigma(lt.sigma[name]))
        if name == "point":
            comp += sed.rowwise(lt.broad, _broad_profiles())
        flux += fiber_frac[:, k : k + 1] * comp
    return flux


@functools.lru_cache(maxsize=1)
def _broad_profiles() -> np.ndarray:
    return sed.line_profiles(sed.BROAD_SIGMA_KMS)


def fiber_spectra(
    gal: Galaxies, lt: Light, fiber_frac: np.ndarray, fiber_r_nmgy: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised rest-frame flux and ivar [N, 1000] (float32) seen by the fiber, and the ``norm`` [N]
    the flux was divided by, in ``NORM_UNIT`` (as SDSS ingest's).

    ``fiber_frac`` [N, 4]: share of bulge, disk, structure and AGN light inside the fiber;
    ``fiber_r_nmgy``: the fiber's r-band flux, which sets the signal-to-noise.
    """
    flux = model_spectra(gal, lt, fiber_frac)
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
    normal = ndtri(uniforms(seed, gal.index, len(WAVE), salt=3))
    noisy = np.where(valid, flux + np.sqrt(var) * normal, 0.0)
    ivar = np.where(valid, 1.0 / var, 0.0)
    mean = np.array([row[ok].mean() if ok.any() else 1.0 for row, ok in zip(noisy, valid, strict=True)])
    mean = np.where(mean > 0, mean, 1.0)
    norm = mean * sed.distance_dimming(gal.z) / _NORM_SCALE
    return (noisy / mean[:, None]).astype(np.float32), (ivar * mean[:, None] ** 2).astype(np.float32), norm


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
