"""The rest-frame spectral grid of Wu & Peek (2020) / Portillo et al. (2020).

log10(lambda / Angstrom) from 3.53 to 3.92 in 1000 bins (about 3388-8318 A); bin centres are
evenly spaced in log lambda, edges halfway between centres. Below the grid: flux-conserving
resampling with inverse-variance propagation, the rest-frame shift and the normalisation
(documented in catalogs/spectra-table.md). No file I/O here: readers live in ``ingest/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galspec_batch.errors import InputError

LOGLAM_MIN = 3.53
LOGLAM_MAX = 3.92
N_BINS = 1000

LOGLAM = np.linspace(LOGLAM_MIN, LOGLAM_MAX, N_BINS)
WAVE = 10.0**LOGLAM
_DLOG = LOGLAM[1] - LOGLAM[0]
LOGLAM_EDGES = np.concatenate([[LOGLAM[0] - _DLOG / 2], LOGLAM[:-1] + _DLOG / 2, [LOGLAM[-1] + _DLOG / 2]])
WAVE_EDGES = 10.0**LOGLAM_EDGES

# ---- resampling onto the grid (pure numpy, no file I/O) ----


@dataclass(frozen=True)
class Resampled:
    """A spectrum on target bins: ``flux`` (0 where unusable), ``ivar`` (0 = no data) and ``coverage``,
    the fraction of each target bin's width covered by valid source pixels."""

    flux: np.ndarray
    ivar: np.ndarray
    coverage: np.ndarray


@dataclass(frozen=True)
class RestSpectrum:
    """A rest-frame spectrum on the grid, normalised: ``flux`` / ``ivar`` float32 [N_BINS],
    ``norm`` the divisor applied to the flux, ``grid_coverage`` the fraction of bins with ivar > 0."""

    flux: np.ndarray
    ivar: np.ndarray
    norm: float
    grid_coverage: float


def edges_from_centers(centers: np.ndarray) -> np.ndarray:
    """Bin edges halfway between increasing centres; the end bins are as wide as their neighbours.
    Apply in log space for log-spaced pixels (SDSS ``loglam``)."""
    c = np.asarray(centers, dtype=np.float64)
    if c.ndim != 1 or c.size < 2 or not np.all(np.diff(c) > 0):
        raise InputError(f"bin centres must be a strictly increasing 1-d array of >= 2 values, got {c.shape}")
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def resample(
    src_edges: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    valid: np.ndarray | None = None,
    dst_edges: np.ndarray = WAVE_EDGES,
    min_coverage: float = 0.5,
) -> Resampled:
    """Flux-conserving rebinning of a piecewise-constant spectrum, with its inverse variance.

    Each target bin gets the overlap-weighted mean of the valid source pixels, so
    ``sum(flux * width)`` over fully covered target bins equals the source integral there. With
    overlap widths ``w_i``: ``var = sum(w_i^2 / ivar_i) / (sum w_i)^2``. Invalid pixels (``valid``
    False, ``ivar <= 0`` or non-finite) count in neither sum. A target bin whose valid coverage
    is below ``min_coverage`` (including bins outside the source range) gets flux 0 and ivar 0.
    """
    src = np.asarray(src_edges, dtype=np.float64)
    dst = np.asarray(dst_edges, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    iv = np.asarray(ivar, dtype=np.float64)
    n, nt = f.size, dst.size - 1
    if src.shape != (n + 1,) or iv.shape != (n,) or not np.all(np.diff(src) > 0):
        raise InputError(
            f"resample needs increasing edges of length n+1 and flux/ivar of length n; got edges "
            f"{src.shape}, flux {f.shape}, ivar {iv.shape}"
        )
    good = np.isfinite(f) & np.isfinite(iv) & (iv > 0)
    if valid is not None:
        good &= np.asarray(valid, dtype=bool)
    lo, hi = max(src[0], dst[0]), min(src[-1], dst[-1])
    out_f, out_iv, cov = np.zeros(nt), np.zeros(nt), np.zeros(nt)
    if lo >= hi:
        return Resampled(out_f, out_iv, cov)
    # Cut the common range at every edge of both grids: each segment lies in exactly one source
    # pixel and one target bin, and is that pair's whole overlap.
    inner = np.concatenate([src[(src > lo) & (src < hi)], dst[(dst > lo) & (dst < hi)]])
    cuts = np.unique(np.concatenate([[lo, hi], inner]))
    width = np.diff(cuts)
    mid = 0.5 * (cuts[1:] + cuts[:-1])
    i = np.searchsorted(src, mid) - 1
    t = np.searchsorted(dst, mid) - 1
    w = np.where(good[i], width, 0.0)
    var_i = np.where(good, 1.0 / np.where(good, iv, 1.0), 0.0)
    wsum = np.bincount(t, w, minlength=nt)
    fsum = np.bincount(t, w * np.where(good, f, 0.0)[i], minlength=nt)
    vsum = np.bincount(t, w**2 * var_i[i], minlength=nt)
    cov = wsum / np.diff(dst)
    ok = (cov >= min_coverage) & (wsum > 0)
    out_f[ok] = fsum[ok] / wsum[ok]
    out_iv[ok] = wsum[ok] ** 2 / vsum[ok]
    return Resampled(out_f, out_iv, cov)


def to_rest_frame(
    wave_edges: np.ndarray, flux: np.ndarray, ivar: np.ndarray, z: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed to rest frame: ``lambda_rest = lambda_obs / (1+z)``; a flux density per unit
    wavelength scales by ``(1+z)`` (the same energy over a narrower interval), ivar by
    ``(1+z)^-2``. Only the shape survives normalisation, but the scaling keeps units honest."""
    if not np.isfinite(z) or z <= -1:
        raise InputError(f"redshift must be finite and > -1, got {z}")
    s = 1.0 + float(z)
    return np.asarray(wave_edges, dtype=np.float64) / s, np.asarray(flux) * s, np.asarray(ivar) / s**2


def normalise(flux: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Divide the flux by the plain mean of the valid (ivar > 0) flux over the grid and multiply
    the ivar by that norm squared; returns (flux, ivar, norm). Raises InputError when the norm is
    not a positive number (no valid bins, or a non-positive mean)."""
    good = np.asarray(ivar) > 0
    norm = float(np.mean(np.asarray(flux)[good])) if good.any() else float("nan")
    if not np.isfinite(norm) or norm <= 0:
        raise InputError(
            f"cannot normalise: the mean flux over {int(good.sum())} valid bins is {norm:.4g} "
            "(expected a positive number)"
        )
    return np.where(good, flux / norm, 0.0), np.where(good, ivar * norm**2, 0.0), norm


def rest_frame_spectrum(
    wave_edges_obs: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    valid: np.ndarray | None,
    z: float,
    min_coverage: float = 0.5,
) -> RestSpectrum:
    """An observed spectrum to the rest-frame grid: shift by ``z``, resample (``resample``), and
    normalise (``normalise``)."""
    edges, f, iv = to_rest_frame(wave_edges_obs, flux, ivar, z)
    r = resample(edges, f, iv, valid, WAVE_EDGES, min_coverage)
    nf, niv, norm = normalise(r.flux, r.ivar)
    return RestSpectrum(nf.astype(np.float32), niv.astype(np.float32), norm, float(np.mean(niv > 0)))
