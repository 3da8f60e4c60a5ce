"""Aperture photometry of the cutouts in a store: the features of the non-image baselines.

Per object, all circular apertures centred on the cutout's centre pixel position ((H-1)/2, (W-1)/2):

- ``flux_total_<band>``: flux within ``TOTAL_RADIUS`` x min(H, W) (0.45: 28.8 px of a 64 px
  cutout), in the store's flux unit. No background is subtracted: the cutouts are taken to be
  sky-subtracted, as Pan-STARRS stacks and the mock are.
- ``flux_fiber_<band>``: flux within a 3" diameter aperture (an SDSS fiber), same unit.
- ``mag_total_<band>``, ``mag_fiber_<band>``: asinh AB magnitudes of the two (Lupton, Gunn &
  Szalay 1999), finite for zero and negative fluxes; the softening is the flux of AB 24.0, about
  the 1-sigma noise of a 3" aperture in a Pan-STARRS 3pi stack.
- ``colour_<a>_<b>``, ``fiber_colour_<a>_<b>``: differences of those magnitudes for the store's
  adjacent bands (g-r, r-i, i-z, z-y), mag.
- ``r50``, ``r90``: radii (arcsec) holding 50% and 90% of the total flux in the r band, from the
  curve of growth; ``concentration`` = r90 / r50.
- ``axis_ratio``: minor / major axis of the r band's adaptive second moments (an elliptical Gaussian
  weight iterated to match the light, as SDSS's adaptive moments) of the pixels inside the total
  aperture; no PSF correction.

NaN and infinite pixels are missing: each is replaced by the mean of the valid pixels in its ring
of the curve of growth (half a pixel wide), which is unbiased for a round profile. A ring without
any valid pixel takes the mean of the nearest ring inside it (outside it for the innermost), so a
stripe across the core loses some central light: 1% of a Gaussian of sigma 3 px under a 2 px
stripe, 6% under a 4 px one. A band that is not observed (mask False), or has less than half of
its total aperture valid, gives NaN features for that band (and for the shape features when it is
the r band).

Every feature is computed for a whole batch at once with numpy: the curve of growth is one
matrix product (fractional pixel areas in each ring, 8x8 subpixels), the moments a few more.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse
from threadpoolctl import threadpool_limits

from galspec_batch.columns import OBJECT_ID
from galspec_batch.errors import InputError
from galspec_batch.options import DEFAULT_BATCH_SIZE
from galspec_batch.store import CutoutStore, open_store

TOTAL_RADIUS = 0.45  # radius of the total aperture, as a share of the smaller cutout side
FIBER_DIAMETER = 3.0  # arcsec, an SDSS fiber
ASINH_ZERO_FLUX_MAG = 24.0  # AB magnitude of zero flux: sets the asinh softening
SHAPE_BAND = "r"
MIN_VALID_FRACTION = 0.5  # of the total aperture's area; below it a band's features are NaN
RING_WIDTH = 0.5  # pixels, the curve of growth's step
SUBPIXELS = 8  # per side, for the fractional pixel area inside each ring
MAX_DENSE_RINGS = 32 << 20  # bytes: larger ring matrices (cutouts beyond ~180 px) stay sparse
MOMENT_ITERATIONS = 15  # adaptive moments converge by a factor 2 per step for a Gaussian
MIN_MOMENT = 0.25  # px^2: the weight's smallest second moment (sigma of half a pixel)
GAUSS_R50_TO_SIGMA = 1 / np.sqrt(2 * np.log(2))  # sigma / r50 of a 2-D Gaussian
# BLAS threads of the ring and moment products: they are small, and on a busy 2-core machine two
# threads ran 4x slower than one (450 against 1800 cutouts/s); the read-ahead thread overlaps reading
BLAS_THREADS = 1

FLUX_TOTAL, FLUX_FIBER = "flux_total_{}", "flux_fiber_{}"
MAG_TOTAL, MAG_FIBER = "mag_total_{}", "mag_fiber_{}"
COLOUR_TOTAL, COLOUR_FIBER = "colour_{}_{}", "fiber_colour_{}_{}"
R50, R90, CONCENTRATION, AXIS_RATIO = "r50", "r90", "concentration", "axis_ratio"
MAG_UNIT, ARCSEC = "mag (AB, asinh)", "arcsec"


def feature_units(bands: tuple[str, ...] | list[str], flux_unit: str = "nanomaggy") -> dict[str, str]:
    """Every feature column in table order, with its unit ('' for ratios)."""
    pairs = list(zip(bands[:-1], bands[1:], strict=True))
    units: dict[str, str] = {}
    for template, unit in ((FLUX_TOTAL, flux_unit), (FLUX_FIBER, flux_unit), (MAG_TOTAL, MAG_UNIT),
                           (MAG_FIBER, MAG_UNIT)):
        units.update({template.format(b): unit for b in bands})
    for template in (COLOUR_TOTAL, COLOUR_FIBER):
        units.update({template.format(a, b): "mag" for a, b in pairs})
    units.update({R50: ARCSEC, R90: ARCSEC, CONCENTRATION: "", AXIS_RATIO: ""})
    return units


def feature_names(bands: tuple[str, ...] | list[str]) -> list[str]:
    """The feature columns of :func:`measure_photometry` for these bands, in table order."""
    return list(feature_units(bands))


def asinh_mag(flux: np.ndarray, zero_point: float | np.ndarray) -> np.ndarray:
    """Asinh magnitudes (Lupton et al. 1999) of fluxes in units whose AB zero point is given;
    equal to zero_point - 2.5 log10(flux) for bright sources, AB 24.0 at zero flux."""
    b = 10 ** (-0.4 * (ASINH_ZERO_FLUX_MAG - np.asarray(zero_point, np.float64)))
    return ASINH_ZERO_FLUX_MAG - 2.5 / np.log(10) * np.arcsinh(np.asarray(flux, np.float64) / (2 * b))


@dataclass(frozen=True)
class Apertures:
    """The rings of the curve of growth for one cutout shape and pixel scale (radii in pixels)."""

    edges: np.ndarray  # [K] outer radius of each ring
    rings: np.ndarray | scipy.sparse.csr_array  # [H*W, K] area of each pixel inside each ring
    area: np.ndarray  # [K] area of each ring
    pixel_ring: np.ndarray  # [H*W] ring of each pixel's centre (K: outside them all)
    k_total: int
    k_fiber: int
    inner: np.ndarray  # [P] the pixels whose centres are inside the total aperture
    dx: np.ndarray  # [P] their centres relative to the cutout centre
    dy: np.ndarray


@functools.lru_cache(maxsize=8)
def apertures(shape: tuple[int, int], pixel_scale: float) -> Apertures:
    """The apertures of :func:`measure_photometry` for cutouts of ``shape`` at ``pixel_scale``."""
    h, w = shape
    r_total = TOTAL_RADIUS * min(h, w)
    r_fiber = FIBER_DIAMETER / 2 / pixel_scale
    if r_fiber > min(h, w) / 2:
        raise InputError(f'{h}x{w} px cutouts at {pixel_scale}"/px are too small for a {FIBER_DIAMETER}" '
                         "aperture")
    edges = np.unique(np.round(np.concatenate([np.arange(RING_WIDTH, max(r_total, r_fiber), RING_WIDTH),
                                               [r_fiber, r_total]]), 9))
    yy, xx = np.mgrid[0:h, 0:w]
    dy, dx = (yy - (h - 1) / 2).ravel(), (xx - (w - 1) / 2).ravel()
    sub = (np.arange(SUBPIXELS) + 0.5) / SUBPIXELS - 0.5
    sy, sx = (a.ravel() for a in np.meshgrid(sub, sub, indexing="ij"))
    dist = np.hypot(dy[:, None] + sy[None, :], dx[:, None] + sx[None, :])  # [H*W, S*S]
    ring = np.searchsorted(edges, dist)  # ring k holds edges[k-1] < d <= edges[k]
    inside = ring < edges.size
    pixel = np.broadcast_to(np.arange(h * w)[:, None], ring.shape)
    rings = scipy.sparse.coo_array(
        (np.full(int(inside.sum()), 1.0 / SUBPIXELS**2, np.float32), (pixel[inside], ring[inside])),
        shape=(h * w, edges.size)).tocsr()  # duplicates are summed
    area = np.asarray(rings.sum(axis=0), np.float64)
    if h * w * edges.size * 4 <= MAX_DENSE_RINGS:  # a dense product is 3x faster than scipy's
        rings = rings.toarray()
    inner = np.flatnonzero(np.hypot(dy, dx) <= r_total)
    return Apertures(edges=edges, rings=rings, area=area,
                     pixel_ring=np.searchsorted(edges, np.hypot(dy, dx)),
                     k_total=int(np.searchsorted(edges, r_total - 1e-6)),
                     k_fiber=int(np.searchsorted(edges, r_fiber - 1e-6)), inner=inner, dx=dx[inner],
                     dy=dy[inner])


def _fill_forward(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Replace the entries of rows that are not ``ok`` by the nearest ok entry inward (outward for
    leading ones); rows without any stay as they are."""
    k = np.arange(values.shape[1])
    last = np.maximum.accumulate(np.where(ok, k, -1), axis=1)
    idx = np.where(last < 0, ok.argmax(axis=1)[:, None], last)
    return np.take_along_axis(values, idx, axis=1)


def curve_of_growth(images: np.ndarray, valid: np.ndarray, ap: Apertures
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curves of growth [M, K] of flattened images [M, H*W] (missing pixels filled with their
    ring's mean), the ring means [M, K] and the valid share of the total aperture [M]."""
    x = np.where(valid, images, np.float32(0))
    sums = (x @ ap.rings).astype(np.float64)
    valid_area = np.broadcast_to(ap.area, sums.shape)
    if not valid.all():
        valid_area = (valid.astype(np.float32) @ ap.rings).astype(np.float64)
    ok = valid_area > 0
    mean = np.divide(sums, valid_area, out=np.full(sums.shape, np.nan), where=ok)
    mean = _fill_forward(mean, ok)
    inner = slice(0, ap.k_total + 1)
    coverage = valid_area[:, inner].sum(axis=1) / ap.area[inner].sum()
    return np.cumsum(mean * ap.area, axis=1), mean, coverage


def _radius_at(cog: np.ndarray, edges: np.ndarray, frac: float) -> np.ndarray:
    """Radius [M] where each curve of growth first reaches ``frac`` of its last value
    (linear between the rings); NaN where that value is not positive."""
    total = cog[:, -1]
    target = frac * total
    c = np.concatenate([np.zeros((len(cog), 1)), cog], axis=1)
    r = np.concatenate([[0.0], edges])
    k = np.argmax(c >= target[:, None], axis=1).clip(1)
    c0, c1 = c[np.arange(len(c)), k - 1], c[np.arange(len(c)), k]
    t = np.divide(target - c0, c1 - c0, out=np.zeros_like(c0), where=c1 > c0)
    return np.where(total > 0, r[k - 1] + t * (r[k] - r[k - 1]), np.nan)


def adaptive_axis_ratio(images: np.ndarray, sigma0: np.ndarray, ap: Apertures, max_moment: float
                        ) -> np.ndarray:
    """Minor/major axis ratio [M] of flattened images [M, H*W] from adaptive second moments of the
    pixels inside the total aperture about the cutout centre, starting from a round weight of
    ``sigma0`` pixels; NaN where the weighted flux or moments stop being positive."""
    images = images[:, ap.inner]
    basis = np.stack([ap.dx**2, ap.dx * ap.dy, ap.dy**2]).astype(np.float32)  # [3, P]
    s2 = np.nan_to_num(sigma0**2, nan=4.0).clip(MIN_MOMENT, max_moment)
    wxx, wxy, wyy = s2.copy(), np.zeros_like(s2), s2.copy()
    good = np.ones(len(images), bool)
    for _ in range(MOMENT_ITERATIONS):
        det = wxx * wyy - wxy**2
        quad = np.stack([wyy, -2 * wxy, wxx], axis=1) / det[:, None]  # inverse weight covariance
        weighted = images * np.exp(-0.5 * (quad.astype(np.float32) @ basis))
        flux = weighted.sum(axis=1, dtype=np.float64)
        m = (weighted @ basis.T).astype(np.float64) / np.where(flux > 0, flux, 1.0)[:, None]
        mxx, mxy, myy = m.T
        ok = good & (flux > 0) & (mxx > 0) & (myy > 0) & (mxx * myy > mxy**2)
        good &= ok
        # the weight that matches a Gaussian of moments M is 2M; its eigenvalues are kept in range
        half, diff = mxx + myy, mxx - myy
        root = np.sqrt(diff**2 + 4 * mxy**2)
        lo = np.clip(half - root, MIN_MOMENT, max_moment)
        hi = np.clip(half + root, MIN_MOMENT, max_moment)
        theta = 0.5 * np.arctan2(2 * mxy, diff)
        c, s = np.cos(theta), np.sin(theta)
        wxx = np.where(ok, hi * c**2 + lo * s**2, wxx)
        wyy = np.where(ok, hi * s**2 + lo * c**2, wyy)
        wxy = np.where(ok, (hi - lo) * c * s, wxy)
    half, root = wxx + wyy, np.sqrt((wxx - wyy) ** 2 + 4 * wxy**2)
    return np.where(good, np.sqrt((half - root) / (half + root)), np.nan)


def batch_features(images: np.ndarray, mask: np.ndarray, bands: tuple[str, ...], zero_points: np.ndarray,
                   pixel_scale: float, shape_band: str = SHAPE_BAND) -> dict[str, np.ndarray]:
    """The features of one batch of cutouts [N, B, H, W] (``mask`` [N, B]: band observed), as
    columns named by :func:`feature_names`."""
    n, nb, h, w = images.shape
    ap = apertures((h, w), float(pixel_scale))
    flat = images.reshape(n * nb, h * w)
    valid = np.isfinite(flat) & np.asarray(mask, bool).reshape(n * nb, 1)
    cog, mean, coverage = curve_of_growth(flat, valid, ap)
    usable = (coverage >= MIN_VALID_FRACTION).reshape(n, nb)
    total = np.where(usable, cog[:, ap.k_total].reshape(n, nb), np.nan)
    fiber = np.where(usable, cog[:, ap.k_fiber].reshape(n, nb), np.nan)
    mag_total, mag_fiber = asinh_mag(total, zero_points), asinh_mag(fiber, zero_points)
    cols: dict[str, np.ndarray] = {}
    for template, values in ((FLUX_TOTAL, total), (FLUX_FIBER, fiber), (MAG_TOTAL, mag_total),
                             (MAG_FIBER, mag_fiber)):
        cols.update({template.format(b): values[:, j] for j, b in enumerate(bands)})
    for template, mags in ((COLOUR_TOTAL, mag_total), (COLOUR_FIBER, mag_fiber)):
        cols.update({template.format(bands[j], bands[j + 1]): mags[:, j] - mags[:, j + 1]
                     for j in range(nb - 1)})

    j = bands.index(shape_band)
    rows = np.arange(n) * nb + j  # the shape band's rows of the flattened batch
    cog_r = cog[rows, : ap.k_total + 1]
    r50 = np.where(usable[:, j], _radius_at(cog_r, ap.edges[: ap.k_total + 1], 0.5), np.nan)
    r90 = np.where(usable[:, j], _radius_at(cog_r, ap.edges[: ap.k_total + 1], 0.9), np.nan)
    img_r = flat[rows]
    if not valid[rows].all():  # missing pixels take their ring's mean, as in the curve of growth
        ring_mean = np.concatenate([mean[rows], np.zeros((n, 1))], axis=1)[:, ap.pixel_ring]
        img_r = np.where(valid[rows], img_r, ring_mean.astype(np.float32))
    q = adaptive_axis_ratio(img_r, r50 * GAUSS_R50_TO_SIGMA, ap, (TOTAL_RADIUS * min(h, w)) ** 2)
    cols.update({R50: r50 * pixel_scale, R90: r90 * pixel_scale, CONCENTRATION: r90 / r50,
                 AXIS_RATIO: np.where(usable[:, j], q, np.nan)})
    return cols


def measure_photometry(store: CutoutStore | str | os.PathLike, rows: np.ndarray | None = None,
                       batch_size: int = DEFAULT_BATCH_SIZE, shape_band: str = SHAPE_BAND) -> pa.Table:
    """Aperture photometry of the store's cutouts (all of them, or the given ``rows`` in their
    order), read ``batch_size`` at a time: ``object_id`` and the columns of :func:`feature_names`
    (float64; each field's ``unit`` in its metadata)."""
    store = store if isinstance(store, CutoutStore) else open_store(store)
    what = f"cutout store {store.path}"
    bands = tuple(store.bands)
    if shape_band not in bands:
        raise InputError(f"{what} has no {shape_band!r} band for the shape features "
                         f"(bands: {''.join(bands)})")
    unknown = [b for b in bands if store.attrs.zero_points[b] is None]
    if unknown:
        raise InputError(f"{what} has no zero point for bands {unknown}; AB magnitudes need one "
                         "(give --zero-point when ingesting)")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    zero_points = np.array([store.attrs.zero_points[b] for b in bands], np.float64)
    apertures(store.image_shape, store.pixel_scale)  # a cutout too small is refused before reading

    if rows is None:
        batches = store.iter_batches(batch_size=batch_size, prefetch=True)
        order = None
    else:
        rows = np.asarray(rows, np.int64).reshape(-1)
        order = np.argsort(rows, kind="stable")
        if np.any(np.diff(rows[order]) == 0):
            raise InputError(f"rows for {what} repeat a row")
        batches = (store.read(rows[order[a:a + batch_size]]) for a in range(0, rows.size, batch_size))
    ids, parts = [], []
    with threadpool_limits(BLAS_THREADS, user_api="blas"):
        for batch in batches:
            ids.append(batch.object_id)
            parts.append(batch_features(batch.images, batch.mask, bands, zero_points, store.pixel_scale,
                                        shape_band))
    units = feature_units(bands, store.attrs.flux_unit)
    columns = {name: np.concatenate([p[name] for p in parts]) if parts else np.empty(0) for name in units}
    object_id = np.concatenate(ids) if ids else np.empty(0, np.int64)
    if order is not None:  # back to the order asked for
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        object_id, columns = object_id[back], {k: v[back] for k, v in columns.items()}
    fields = [pa.field(OBJECT_ID, pa.int64())] + [
        pa.field(name, pa.float64(), metadata={"unit": unit}) for name, unit in units.items()]
    return pa.table([pa.array(object_id, pa.int64())] + [pa.array(columns[f.name], pa.float64())
                                                          for f in fields[1:]], schema=pa.schema(fields))
