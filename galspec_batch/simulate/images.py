"""grizy cutouts of mock galaxies: Sersic bulge + exponential disk with blue arms or clumps,
an AGN point source, neighbour galaxies and stars, a Moffat PSF per band, Pan-STARRS 3pi sky
noise and a few artifacts (NaN stripes, a missing band). Pixel values are nanomaggies.

Mergers move a share of their bulge and disk light into tidal features with the same colours:
two curved tails from disk-dominated galaxies (Toomre & Toomre 1972), interleaved shells around
bulge-dominated ones (Quinn 1984), and often a close companion; their clumps of star formation
crowd the centre (gas driven inwards; Barnes & Hernquist 1996).

Each object is rendered on a padded grid (so the FFT convolution does not wrap light around)
with its own random generator seeded from (seed, object index).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter
from scipy.special import gammainc

from galspec_batch.simulate import sed
from galspec_batch.simulate.population import BULGE_N, DISK_N, Galaxies

# Pan-STARRS 3pi stack: 5-sigma point-source depths (AB) and median seeing FWHM (arcsec) per band
DEPTH_5SIGMA = np.array([23.3, 23.2, 23.1, 22.3, 21.3])
SEEING_FWHM = np.array([1.27, 1.17, 1.11, 1.07, 1.03])
MOFFAT_BETA = 3.0
GAIN = np.array([4000.0, 4500.0, 5000.0, 4000.0, 2500.0])  # electrons per nanomaggy (source noise)
FIBER_RADIUS = 1.5  # arcsec (SDSS 3" fibers)
FWHM_GRID = np.round(np.arange(0.80, 1.6001, 0.02), 3)
PAD = 8  # pixels of padding on each side
NEIGHBOUR_DENSITY = 6.0  # galaxies with 18 < r < 23.5 per arcmin^2
STAR_DENSITY = 0.8  # stars with 14 < r < 23 per arcmin^2
P_NAN_STRIPE, P_MISSING_BAND = 0.03, 0.015
_B = {BULGE_N: 7.669, DISK_N: 1.678}  # b_n of the Sersic profile
MERGER_CLUMP_RADIUS = 0.4  # merger clumps' radial scale relative to the disk's
SHELL_HOST_BT = 0.5  # mergers with a larger bulge fraction show shells, the others tails
TAIL_LENGTH = (2.5, 5.0)  # effective radii
TAIL_WIDTH = 0.25  # effective radii (Gaussian sigma)
SHELL_WIDTH = 0.12
COMPANION_PROB = 0.5
COMPANION_DISTANCE = (1.5, 3.5)  # effective radii
COMPANION_SIZE = 0.4  # effective radii (Gaussian sigma)


@dataclass(frozen=True)
class Components:
    """Band fluxes (nanomaggies, [N, 5]) of each light component of a batch of galaxies."""

    bulge: np.ndarray
    disk: np.ndarray
    struct: np.ndarray
    point: np.ndarray  # the AGN (continuum + lines), at the centre


@dataclass(frozen=True)
class Rendered:
    images: np.ndarray  # [N, 5, H, W] float32 nanomaggies, NaN in stripes, 0 in missing bands
    mask: np.ndarray  # [N, 5] bool, True where the band is present
    fiber_frac: np.ndarray  # [N, 4] share of bulge, disk, structure and AGN light in the fiber
    psf_fwhm: np.ndarray  # [N, 5] arcsec


class _Grid:
    """Coordinates, PSF transfer functions and the PSF-blurred fiber aperture for one cutout size."""

    def __init__(self, shape: tuple[int, int], pixel_scale: float):
        self.shape = shape
        self.pixel_scale = pixel_scale
        self.padded = (shape[0] + 2 * PAD, shape[1] + 2 * PAD)
        ph, pw = self.padded
        self.centre = ((ph - 1) / 2.0, (pw - 1) / 2.0)
        yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
        self.x = (xx - self.centre[1]) * pixel_scale
        self.y = (yy - self.centre[0]) * pixel_scale
        r2 = self.x**2 + self.y**2
        otf = []
        for fwhm in FWHM_GRID:
            alpha = fwhm / (2 * np.sqrt(2 ** (1 / MOFFAT_BETA) - 1))
            psf = (1 + r2 / alpha**2) ** (-MOFFAT_BETA)
            psf = np.fft.ifftshift(psf / psf.sum())  # centre on pixel (0, 0) for the FFT
            otf.append(scipy.fft.rfft2(psf.astype(np.float32)))
        self.otf = np.stack(otf)
        aperture = (r2 <= FIBER_RADIUS**2).astype(np.float32)
        # sum(map * W) = the map's light inside the fiber after the PSF (PSF is symmetric)
        self.fiber_weight = scipy.fft.irfft2(scipy.fft.rfft2(aperture)[None] * self.otf, s=self.padded)
        self.half_size = 0.5 * min(shape) * pixel_scale + PAD * pixel_scale


@functools.lru_cache(maxsize=4)
def _grid(shape: tuple[int, int], pixel_scale: float) -> _Grid:
    return _Grid(shape, pixel_scale)


def sky_sigma(pixel_scale: float) -> np.ndarray:
    """Per-pixel sky noise (nanomaggies) per band at Pan-STARRS 3pi stack depth."""
    sigma_psf = SEEING_FWHM / 2.3548
    area = 4 * np.pi * sigma_psf**2  # noise-equivalent area of the PSF, arcsec^2
    flux5 = 10 ** (-0.4 * (DEPTH_5SIGMA - 22.5))
    return flux5 / (5 * np.sqrt(area)) * pixel_scale


def render(
    gal: Galaxies, comp: Components, seed: int, shape: tuple[int, int], pixel_scale: float
) -> Rendered:
    """Cutouts [N, 5, H, W] of a batch of galaxies and the light of each component in the fiber."""
    grid = _grid(tuple(shape), float(pixel_scale))
    n = len(gal.z)
    images = np.empty((n, 5, *shape), np.float32)
    mask = np.ones((n, 5), bool)
    fiber = np.zeros((n, 4))
    fwhm = np.zeros((n, 5))
    # light of each Sersic component inside the (padded) stamp, for normalisation
    stamp_b = _enclosed(BULGE_N, grid.half_size / (gal.re_bulge * np.sqrt(gal.q_bulge)))
    stamp_d = _enclosed(DISK_N, grid.half_size / (gal.re_disk * np.sqrt(gal.q_disk)))
    sigma = sky_sigma(pixel_scale)
    for i in range(n):
        rng = np.random.default_rng([seed, int(gal.index[i]), 1])
        images[i], mask[i], fiber[i], fwhm[i] = _render_one(
            grid, gal, comp, i, rng, stamp_b[i], stamp_d[i], sigma
        )
    return Rendered(images, mask, fiber, fwhm)


def _enclosed(n_sersic: float, x: np.ndarray) -> np.ndarray:
    """Share of a Sersic profile's light inside x effective radii."""
    return gammainc(2 * n_sersic, _B[n_sersic] * np.asarray(x) ** (1 / n_sersic))


def _render_one(grid: _Grid, gal: Galaxies, comp: Components, i: int, rng, stamp_b, stamp_d, sigma):
    ps = grid.pixel_scale
    dx, dy = rng.uniform(-0.5, 0.5, 2) * ps
    x, y = grid.x - np.float32(dx), grid.y - np.float32(dy)
    fwhm = np.clip(SEEING_FWHM * np.exp(0.08 * rng.standard_normal() + 0.03 * rng.standard_normal(5)),
                   FWHM_GRID[0], FWHM_GRID[-1])
    psf_idx = np.rint((fwhm - FWHM_GRID[0]) / (FWHM_GRID[1] - FWHM_GRID[0])).astype(int)

    bulge = _sersic(x, y, gal.re_bulge[i], gal.q_bulge[i], gal.pa_bulge[i], BULGE_N, soft=0.35 * ps)
    bulge *= stamp_b / bulge.sum()
    disk, xd, yd = _disk_plane(x, y, gal.re_disk[i], gal.q_disk[i], gal.pa[i])
    disk *= stamp_d / disk.sum()
    if gal.merger[i]:
        tidal = _tidal(grid, dx, dy, gal.re_disk[i], gal.bulge_frac[i] > SHELL_HOST_BT, rng)
        f = gal.tidal_frac[i]
        bulge = (1 - f) * bulge + (f * stamp_b) * tidal
        disk = (1 - f) * disk + (f * stamp_d) * tidal
    if gal.arms[i]:
        struct = _arms(xd, yd, gal.re_disk[i], rng) * stamp_d
    else:
        scale = gal.re_disk[i] * (MERGER_CLUMP_RADIUS if gal.merger[i] else 1.0)
        struct = _clumps(grid, dx, dy, scale, gal.q_disk[i], gal.pa[i], rng)
    maps = np.stack([bulge, disk, struct]).reshape(3, -1)
    fluxes = np.stack([comp.bulge[i], comp.disk[i], comp.struct[i]], axis=1).astype(np.float32)  # [5, 3]
    img = (fluxes @ maps).reshape(5, *grid.padded)

    weight = grid.fiber_weight[psf_idx[1]]
    fiber = np.append(maps @ weight.reshape(-1), 0.0)
    cy, cx = grid.centre[0] + dy / ps, grid.centre[1] + dx / ps
    if comp.point[i].any():
        _splat(img, np.array([cy]), np.array([cx]), comp.point[i][None, :])
        fiber[3] = _bilinear(weight, cy, cx)
    _add_neighbours(img, grid, rng)
    _add_stars(img, grid, rng)

    img = scipy.fft.irfft2(scipy.fft.rfft2(img) * grid.otf[psf_idx], s=grid.padded)
    img = img[:, PAD : PAD + grid.shape[0], PAD : PAD + grid.shape[1]]
    depth = sigma * rng.uniform(0.85, 1.2)
    var = depth[:, None, None] ** 2 + np.maximum(img, 0) / GAIN[:, None, None]
    img = img + np.sqrt(var) * rng.standard_normal(img.shape, dtype=np.float32)
    band_ok = _artifacts(img, rng)
    return img, band_ok, fiber, fwhm


def _sersic(x, y, re, q, pa, n_sersic, soft=0.0):
    c, s = np.float32(np.cos(pa)), np.float32(np.sin(pa))
    xr = c * x + s * y
    yr = (c * y - s * x) / np.float32(q)
    r = np.sqrt(xr * xr + yr * yr + np.float32(soft**2)) / np.float32(re)
    return np.exp(-np.float32(_B[n_sersic]) * (r if n_sersic == 1 else r ** np.float32(1 / n_sersic)))


def _disk_plane(x, y, re, q, pa):
    c, s = np.float32(np.cos(pa)), np.float32(np.sin(pa))
    xd = c * x + s * y
    yd = (c * y - s * x) / np.float32(q)
    return np.exp(-np.float32(_B[DISK_N]) * np.sqrt(xd * xd + yd * yd) / np.float32(re)), xd, yd


def _arms(xd, yd, re, rng):
    """Logarithmic spiral arms in the disk plane, under an envelope wider than the disk, none in
    the centre."""
    m = rng.choice([2, 2, 2, 3, 4])
    pitch = np.deg2rad(rng.uniform(12, 30))
    r = np.sqrt(xd * xd + yd * yd) / np.float32(re) + np.float32(1e-3)
    winding = np.float32(m / np.tan(pitch))
    phase = m * np.arctan2(yd, xd) - winding * np.log(r) + np.float32(rng.uniform(0, 2 * np.pi))
    envelope = np.exp(np.float32(-_B[DISK_N] / 1.4) * r) * (1 - np.exp(-((r / np.float32(0.6)) ** 2)))
    arms = envelope * (0.5 + 0.5 * np.cos(phase)) ** 4
    return arms / max(float(arms.sum()), 1e-30)


def _clumps(grid, dx, dy, re, q, pa, rng):
    """Star-forming clumps: knots of about a tenth of the disk's effective radius, drawn from the
    exponential disk."""
    k = int(rng.integers(6, 21))
    radius = rng.gamma(2.0, re / _B[DISK_N], k)
    phi = rng.uniform(0, 2 * np.pi, k)
    xd, yd = radius * np.cos(phi), radius * np.sin(phi) * q
    c, s = np.cos(pa), np.sin(pa)
    x, y = c * xd - s * yd + dx, s * xd + c * yd + dy
    w = rng.lognormal(0.0, 0.4, k)
    out = np.zeros((1, *grid.padded), np.float32)
    ps = grid.pixel_scale
    _splat(out, grid.centre[0] + y / ps, grid.centre[1] + x / ps, (w / w.sum())[:, None])
    size_px = 0.12 * re / ps
    return gaussian_filter(out[0], size_px, truncate=3.0) if size_px > 0.3 else out[0]


def _tidal(grid: _Grid, dx: float, dy: float, re: float, shells: bool, rng) -> np.ndarray:
    """Unit-sum map of a merger's tidal features (shells or two tails, maybe a companion)."""
    features = np.zeros((1, *grid.padded), np.float32)
    if shells:
        k = int(rng.integers(2, 5))
        radius = re * (1.5 + 1.2 * np.arange(k))
        centre = rng.uniform(0, 2 * np.pi) + np.pi * np.arange(k)  # alternating sides
        phi = centre[:, None] + rng.uniform(0.6, 1.2, k)[:, None] * np.linspace(-1, 1, 30)[None, :]
        x, y = radius[:, None] * np.cos(phi), radius[:, None] * np.sin(phi)
        w, width = np.ones_like(x), SHELL_WIDTH
    else:
        t = np.linspace(0, 1, 40)[None, :]
        start = rng.uniform(0, 2 * np.pi) + np.array([0.0, np.pi])[:, None]
        radius = re * (1 + rng.uniform(*TAIL_LENGTH) * t)
        phi = start + rng.choice([-1, 1]) * rng.uniform(0.6, 1.4) * t
        x, y, width = radius * np.cos(phi), radius * np.sin(phi), TAIL_WIDTH
        w = np.exp(-2 * t) * np.ones((2, 1))  # fading along the tail
    _place(features, grid, x.ravel() + dx, y.ravel() + dy, w.ravel() / w.sum(), width * re)
    if rng.uniform() < COMPANION_PROB:
        companion = np.zeros_like(features)
        d, phi = re * rng.uniform(*COMPANION_DISTANCE), rng.uniform(0, 2 * np.pi)
        at_x, at_y = np.array([d * np.cos(phi) + dx]), np.array([d * np.sin(phi) + dy])
        _place(companion, grid, at_x, at_y, np.ones(1), COMPANION_SIZE * re)
        features += rng.uniform(0.3, 1.0) * companion
    return features[0] / max(float(features.sum()), 1e-30)


def _place(img: np.ndarray, grid: _Grid, x: np.ndarray, y: np.ndarray, w: np.ndarray, sigma: float) -> None:
    """Add points of weights ``w`` at (x, y) arcsec, blurred by a Gaussian of ``sigma`` arcsec."""
    ps = grid.pixel_scale
    spots = np.zeros_like(img)
    _splat(spots, grid.centre[0] + y / ps, grid.centre[1] + x / ps, w[:, None])
    img += gaussian_filter(spots[0], sigma / ps, truncate=3.0)[None] if sigma / ps > 0.3 else spots


def _splat(img: np.ndarray, row: np.ndarray, col: np.ndarray, flux: np.ndarray) -> None:
    """Add point sources (flux [K, bands]) at fractional pixel positions, bilinearly."""
    r0, c0 = np.floor(row).astype(int), np.floor(col).astype(int)
    fr, fc = row - r0, col - c0
    h, w = img.shape[-2:]
    for rr, cc, wt in ((r0, c0, (1 - fr) * (1 - fc)), (r0 + 1, c0, fr * (1 - fc)),
                       (r0, c0 + 1, (1 - fr) * fc), (r0 + 1, c0 + 1, fr * fc)):
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        np.add.at(img, (slice(None), rr[ok], cc[ok]), (flux[ok] * wt[ok, None]).astype(img.dtype).T)


def _bilinear(a: np.ndarray, row: float, col: float) -> float:
    r0, c0 = int(np.floor(row)), int(np.floor(col))
    fr, fc = row - r0, col - c0
    return float((1 - fr) * (1 - fc) * a[r0, c0] + fr * (1 - fc) * a[r0 + 1, c0]
                 + (1 - fr) * fc * a[r0, c0 + 1] + fr * fc * a[r0 + 1, c0 + 1])


def _counts_magnitudes(rng, k: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """Magnitudes with number counts N(<m) ~ 10^(slope m) between lo and hi."""
    u = rng.uniform(size=k)
    return np.log10(10 ** (slope * lo) + u * (10 ** (slope * hi) - 10 ** (slope * lo))) / slope


def _area_arcmin2(grid: _Grid) -> float:
    return grid.padded[0] * grid.padded[1] * (grid.pixel_scale / 60) ** 2


def _add_neighbours(img, grid, rng) -> None:
    k = rng.poisson(NEIGHBOUR_DENSITY * _area_arcmin2(grid))
    if k == 0:
        return
    mag = _counts_magnitudes(rng, k, 18.0, 23.5, 0.35)
    z = rng.uniform(0.05, 0.5, k)
    colours = sed.band_fluxes(sed.templates().archetype(rng.uniform(0, 1, k)), z)
    colours /= colours[:, sed.R_BAND : sed.R_BAND + 1]
    flux = 10 ** (-0.4 * (mag - 22.5))[:, None] * colours
    ph, pw = grid.padded
    ps = grid.pixel_scale
    for j in range(k):
        x0 = rng.uniform(-0.5, 0.5) * pw * ps
        y0 = rng.uniform(-0.5, 0.5) * ph * ps
        if x0 * x0 + y0 * y0 < 1.5**2:
            continue
        n_sersic = BULGE_N if rng.uniform() < 0.3 else DISK_N
        re = 0.3 + 1.2 * rng.uniform() * 10 ** (-0.2 * (mag[j] - 19))
        q, pa = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        # render only a window around the neighbour: most of it is far from everything else
        half = int(np.ceil((8 * re + 3.0) / ps))
        r0, c0 = int(grid.centre[0] + y0 / ps), int(grid.centre[1] + x0 / ps)
        rows = slice(max(r0 - half, 0), min(r0 + half + 1, ph))
        cols = slice(max(c0 - half, 0), min(c0 + half + 1, pw))
        prof = _sersic(grid.x[rows, cols] - np.float32(x0), grid.y[rows, cols] - np.float32(y0), re, q, pa,
                       n_sersic, soft=0.35 * ps)
        prof /= max(float(prof.sum()), 1e-30)
        img[:, rows, cols] += flux[j].astype(np.float32)[:, None, None] * prof


def _add_stars(img, grid, rng) -> None:
    k = rng.poisson(STAR_DENSITY * _area_arcmin2(grid))
    if k == 0:
        return
    mag = _counts_magnitudes(rng, k, 14.0, 23.0, 0.15)
    colours = sed.blackbody_colours(rng.uniform(3200, 9000, k))
    ph, pw = grid.padded
    flux = 10 ** (-0.4 * (mag - 22.5))[:, None] * colours
    _splat(img, rng.uniform(0, ph - 1, k), rng.uniform(0, pw - 1, k), flux)


def _artifacts(img: np.ndarray, rng) -> np.ndarray:
    """NaN stripes (a bad row/column block in one band) and missing bands (zeros, mask False)."""
    ok = np.ones(5, bool)
    if rng.uniform() < P_NAN_STRIPE:
        b, width = rng.integers(0, 5), int(rng.integers(1, 5))
        if rng.uniform() < 0.5:
            r0 = int(rng.integers(0, img.shape[1]))
            img[b, r0 : r0 + width, :] = np.nan
        else:
            c0 = int(rng.integers(0, img.shape[2]))
            img[b, :, c0 : c0 + width] = np.nan
    if rng.uniform() < P_MISSING_BAND:
        b = rng.choice(5, p=[0.3, 0.1, 0.1, 0.15, 0.35])
        img[b] = 0.0
        ok[b] = False
    return ok
