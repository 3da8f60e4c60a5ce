"""Figures: each draws the expected panels and writes a PNG with real content."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from galspec_batch.plots import (  # noqa: E402
    plot_calibration,
    plot_figure1,
    plot_latent_corner,
    plot_sky_map,
)
from galspec_batch.spectra import WAVE  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _png_ok(path, min_bytes=20_000):
    assert path.stat().st_size > min_bytes
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_calibration_before_and_after(tmp_path):
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 1, (800, 3))
    std = np.full_like(mean, 0.2)
    true = mean + rng.normal(0, 1, mean.shape) * 0.2 * np.array([0.5, 1.0, 3.0])
    fig = plot_calibration(true, mean, std, scale=np.array([0.5, 1.0, 3.0]), path=tmp_path / "c.png")
    _png_ok(tmp_path / "c.png")
    assert len(fig.axes) == 2
    before, after = fig.axes
    assert sum(len(line.get_xdata()) > 2 for line in before.lines) == 3  # one curve per latent
    # the first latent's std is twice too large: its curve lies above the diagonal; after, on it
    x, y = before.lines[1].get_data()
    assert np.all(y[5:-5] > x[5:-5])
    x, y = after.lines[1].get_data()
    assert np.abs(y - x).max() < 0.07
    assert "latent_3: 69% within" in after.get_legend().get_texts()[3].get_text()
    assert "latent_3: 25% within" in before.get_legend().get_texts()[3].get_text()  # P(|z| < 1/3) = 26%
    assert len(plot_calibration(true, mean, std).axes) == 1
    # heavy tails: a Gaussian of the right 1-sigma is too narrow at 95%; the fitted t shape is right
    heavy = mean + rng.standard_t(3, mean.shape) * 0.2
    from galspec_batch.uncertainty import fit_t

    fits = [fit_t((heavy - mean)[:, i] / 0.2) for i in range(3)]
    scale, nu = np.array([f[0] for f in fits]), np.array([f[1] for f in fits])
    fig = plot_calibration(heavy, mean, std, scale=scale, nu=nu)
    x, y = fig.axes[1].lines[1].get_data()
    assert np.abs(y - x).max() < 0.07
    x, y = fig.axes[0].lines[1].get_data()
    assert np.abs(y - x).max() > 0.1


def test_plot_latent_corner_from_arrays_and_dataframe(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (600, 6))
    fig = plot_latent_corner(x, observed=x[:200] + 0.3, path=tmp_path / "corner.png")
    _png_ok(tmp_path / "corner.png", 50_000)
    assert len(fig.axes) == 21  # the lower triangle and the diagonal of 6 x 6
    assert [ax.get_xlabel() for ax in fig.axes[-6:]] == [f"latent_{i}" for i in range(1, 7)]
    df = pd.DataFrame({f"latent_{i}": x[:, i - 1] for i in range(1, 4)})
    assert len(plot_latent_corner(df).axes) == 6


def test_plot_sky_map_of_a_catalog(tiny_catalog, tmp_path):
    from galspec_batch.catalog import read_catalog
    from galspec_batch.sky import pixel_at_order

    fig = plot_sky_map(tiny_catalog, path=tmp_path / "sky.png")
    _png_ok(tmp_path / "sky.png")
    ax, cbar = fig.axes
    assert ax.xaxis_inverted() and ax.get_xlabel() == "RA (deg)"
    assert cbar.get_ylabel() == "objects per cell"
    from galspec_batch.catalog.reader import catalog_pixels

    published = catalog_pixels(tiny_catalog)  # the published partitions, merged by size
    assert len(ax.patches) == len(published) >= 1
    assert str(sorted({o for o, _ in published})) in ax.get_legend().get_texts()[0].get_text()
    t = read_catalog(tiny_catalog)
    n_partitions = len(np.unique(pixel_at_order(t["_healpix_29"].to_numpy(), 4)))
    assert len(plot_sky_map(tiny_catalog, partition_order=4).axes[0].patches) == n_partitions
    fig = plot_sky_map(t, column="latent_1")
    assert fig.axes[1].get_ylabel() == "mean latent_1 per cell" and not fig.axes[0].patches


def test_plot_sky_map_keeps_a_field_across_ra_zero_in_one_piece():
    df = pd.DataFrame({"ra": np.r_[np.linspace(358, 359.9, 50), np.linspace(0, 2, 50)], "dec": np.zeros(100)})
    ax = plot_sky_map(df).axes[0]
    lo, hi = sorted(ax.get_xlim())
    assert hi - lo < 10


def test_plot_figure1(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.normal(0, 0.1, (3, 5, 32, 32)).astype(np.float32)
    images[:, :, 12:20, 12:20] += 5.0
    flux = 1 + 0.2 * np.sin(WAVE / 300)[None] + rng.normal(0, 0.05, (3, WAVE.size))
    ivar = np.ones_like(flux)
    ivar[0, :100] = 0
    fig = plot_figure1(images, WAVE, flux, flux * 1.02, flux * 0.9, flux * 1.1, true_ivar=ivar,
                       titles=["a", "b", "c"], path=tmp_path / "fig1.png")
    _png_ok(tmp_path / "fig1.png", 50_000)
    assert len(fig.axes) == 6
    spec = fig.axes[1]
    assert spec.get_xlabel() == "" and fig.axes[-1].get_xlabel().startswith("rest-frame wavelength")
    assert [t.get_text() for t in spec.get_legend().get_texts()] == [
        "predicted 16-84%", "true spectrum", "predicted median"]
    assert np.isnan(spec.lines[0].get_ydata()[:100]).all()  # unobserved pixels are not drawn
