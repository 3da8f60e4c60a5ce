"""The rest-frame grid and the flux-conserving, ivar-propagating resampler."""

import numpy as np
import pytest

from galspec_batch.errors import InputError
from galspec_batch.spectra import (
    LOGLAM,
    N_BINS,
    WAVE,
    WAVE_EDGES,
    edges_from_centers,
    normalise,
    resample,
    rest_frame_spectrum,
    to_rest_frame,
)


def _source(lo=3300.0, hi=9000.0, dlog=1e-4):
    """An SDSS-like log-spaced source grid (pixel edges) and a smooth spectrum on it."""
    edges = 10 ** np.arange(np.log10(lo), np.log10(hi), dlog)
    mid = 0.5 * (edges[1:] + edges[:-1])
    flux = 1.0 + 0.5 * np.sin(mid / 300.0) + 2.0 * np.exp(-0.5 * ((mid - 6563.0) / 4.0) ** 2)
    return edges, flux


def _integral(edges, flux, a, b):
    """Integral of a piecewise-constant function over [a, b], independently: interpolate its
    (exactly piecewise-linear) cumulative integral."""
    cum = np.concatenate([[0.0], np.cumsum(flux * np.diff(edges))])
    return np.interp(b, edges, cum) - np.interp(a, edges, cum)


def test_grid_constants():
    assert N_BINS == 1000 and LOGLAM.size == 1000 and WAVE_EDGES.size == 1001
    assert WAVE[0] == pytest.approx(3388.4, abs=0.1) and WAVE[-1] == pytest.approx(8317.6, abs=0.1)
    np.testing.assert_allclose(
        np.log10(WAVE_EDGES[1:-1]), 0.5 * (LOGLAM[1:] + LOGLAM[:-1]), rtol=0, atol=1e-12
    )


def test_edges_from_centers_is_halfway_and_symmetric_at_the_ends():
    e = edges_from_centers(np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(e, [0.5, 1.5, 3.0, 5.0])
    with pytest.raises(InputError):
        edges_from_centers(np.array([1.0, 1.0]))


def test_flux_is_conserved_over_the_whole_grid():
    edges, flux = _source()
    r = resample(edges, flux, np.ones_like(flux))
    assert (r.ivar > 0).all() and np.allclose(r.coverage, 1.0)
    total = np.sum(r.flux * np.diff(WAVE_EDGES))
    expected = _integral(edges, flux, WAVE_EDGES[0], WAVE_EDGES[-1])
    assert total == pytest.approx(expected, rel=1e-6)
    # and bin by bin
    per_bin = r.flux * np.diff(WAVE_EDGES)
    np.testing.assert_allclose(per_bin, _integral(edges, flux, WAVE_EDGES[:-1], WAVE_EDGES[1:]), rtol=1e-9)


def test_flux_is_conserved_where_the_source_ends_inside_the_grid():
    edges, flux = _source(lo=4000.0, hi=7000.0, dlog=1.7e-4)  # unaligned with the grid
    r = resample(edges, flux, np.ones_like(flux))
    full = r.coverage > 1 - 1e-9
    assert 0 < full.sum() < N_BINS
    lo, hi = WAVE_EDGES[:-1][full][0], WAVE_EDGES[1:][full][-1]
    assert np.sum((r.flux * np.diff(WAVE_EDGES))[full]) == pytest.approx(
        _integral(edges, flux, lo, hi), rel=1e-6
    )
    # outside the observed range: flux 0, ivar 0
    outside = (WAVE_EDGES[1:] <= edges[0]) | (WAVE_EDGES[:-1] >= edges[-1])
    assert outside.sum() > 100
    assert (r.flux[outside] == 0).all() and (r.ivar[outside] == 0).all()


def test_same_grid_is_the_identity():
    rng = np.random.default_rng(1)
    flux, ivar = rng.normal(size=N_BINS), rng.uniform(0.5, 2.0, N_BINS)
    r = resample(WAVE_EDGES, flux, ivar)
    np.testing.assert_allclose(r.flux, flux, rtol=1e-12)
    np.testing.assert_allclose(r.ivar, ivar, rtol=1e-9)


def test_ivar_matches_monte_carlo_variance():
    rng = np.random.default_rng(0)
    edges, flux = _source(dlog=1.3e-4)  # about 3 source pixels per grid bin, partial overlaps
    sigma = rng.uniform(0.5, 2.0, flux.size)
    ivar = 1 / sigma**2
    draws = 3000
    out = np.empty((draws, N_BINS))
    for k in range(draws):
        out[k] = resample(edges, flux + sigma * rng.normal(size=flux.size), ivar).flux
    predicted = 1 / resample(edges, flux, ivar).ivar
    ratio = out.var(axis=0, ddof=1) / predicted
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.01)  # 1000 bins x 3000 draws
    assert np.all(np.abs(ratio - 1) < 0.12)  # per bin: sqrt(2/3000) = 2.6% rms, > 4.5 sigma
    pull = (out.mean(axis=0) - resample(edges, flux, ivar).flux) / np.sqrt(predicted / draws)
    assert np.abs(pull).max() < 5 and abs(pull.mean()) < 0.2  # unbiased


def test_masked_pixels_count_in_neither_sum_and_thin_bins_are_dropped():
    edges, flux = _source()
    ivar = np.ones_like(flux)
    valid = np.ones(flux.size, bool)
    centre = 0.5 * (edges[1:] + edges[:-1])
    bad = (centre > 5000) & (centre < 5100)
    flux_bad = np.where(bad, 1e6, flux)  # garbage in masked pixels must not leak
    valid[bad] = False
    r = resample(edges, flux_bad, ivar, valid)
    clean = resample(edges, flux, ivar)
    far = (WAVE_EDGES[1:] < 4990) | (WAVE_EDGES[:-1] > 5110)
    np.testing.assert_allclose(r.flux[far], clean.flux[far], rtol=1e-12)
    assert r.flux.max() < 10
    inside = (WAVE_EDGES[:-1] > 5001) & (WAVE_EDGES[1:] < 5099)
    assert inside.sum() > 10 and (r.ivar[inside] == 0).all() and (r.flux[inside] == 0).all()
    # a partly masked bin: the valid part is a weighted mean, its ivar reflects the lost width
    partial = (r.coverage > 0.5) & (r.coverage < 0.999)
    assert partial.any() and (r.ivar[partial] < clean.ivar[partial]).all()
    # ivar == 0 and NaN pixels are masked too
    ivar0 = np.where(bad, 0.0, ivar)
    nan_flux = np.where(bad, np.nan, flux)
    np.testing.assert_allclose(resample(edges, nan_flux, ivar0).flux, r.flux)


def test_to_rest_frame_shifts_and_conserves_energy():
    edges, flux = _source()
    z = 0.1
    e, f, iv = to_rest_frame(edges, flux, np.ones_like(flux), z)
    np.testing.assert_allclose(e, edges / 1.1)
    np.testing.assert_allclose(f, flux * 1.1)
    np.testing.assert_allclose(iv, 1 / 1.1**2)
    assert np.sum(f * np.diff(e)) == pytest.approx(np.sum(flux * np.diff(edges)))
    with pytest.raises(InputError):
        to_rest_frame(edges, flux, flux, np.nan)


def test_normalise_divides_by_mean_valid_flux_and_keeps_signal_to_noise():
    flux = np.array([2.0, 4.0, 100.0, 6.0])
    ivar = np.array([1.0, 4.0, 0.0, 0.25])
    f, iv, norm = normalise(flux, ivar)
    assert norm == pytest.approx(4.0)
    np.testing.assert_allclose(f, [0.5, 1.0, 0.0, 1.5])
    np.testing.assert_allclose(iv, [16.0, 64.0, 0.0, 4.0])
    np.testing.assert_allclose((f * np.sqrt(iv))[ivar > 0], (flux * np.sqrt(ivar))[ivar > 0])
    with pytest.raises(InputError, match="cannot normalise"):
        normalise(np.array([-1.0, -2.0]), np.ones(2))
    with pytest.raises(InputError, match="0 valid bins"):
        normalise(np.ones(3), np.zeros(3))


def test_rest_frame_spectrum_puts_a_line_at_its_rest_wavelength():
    z = 0.25
    edges_rest, _ = _source(lo=3000.0, hi=9000.0)
    mid = 0.5 * (edges_rest[1:] + edges_rest[:-1])
    line = 1.0 + 5.0 * np.exp(-0.5 * ((mid - 5007.0) / 3.0) ** 2)
    # observe it: wavelengths stretch by 1+z, flux density drops by 1+z
    s = rest_frame_spectrum(edges_rest * (1 + z), line / (1 + z), np.ones_like(line), None, z)
    assert WAVE[np.argmax(s.flux)] == pytest.approx(5007.0, abs=6.0)
    assert s.flux.dtype == np.float32 and s.grid_coverage == 1.0
    assert np.mean(s.flux) == pytest.approx(1.0, rel=1e-6)
