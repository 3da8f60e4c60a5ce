"""Aperture photometry: analytic profiles of known flux, size and shape, missing pixels and bands,
and the mock survey's truth."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from galspec_batch import photometry
from galspec_batch.catalog.joins import match_rows
from galspec_batch.errors import InputError
from galspec_batch.photometry import (
    ASINH_ZERO_FLUX_MAG,
    FIBER_DIAMETER,
    asinh_mag,
    feature_names,
    measure_photometry,
)
from galspec_batch.simulate import simulate_survey
from galspec_batch.store import create_store

SIZE, SCALE = 64, 0.25
BANDS = tuple("grizy")
SED_MAGS = np.array([17.0, 16.5, 16.2, 16.0, 15.9])  # g..y, AB
SIGMA = 3.0  # px
GAUSS_R50 = np.sqrt(2 * np.log(2))  # r50 / sigma of a 2-D Gaussian
EXP_R50, EXP_R90 = 1.67835, 3.88972  # r50 / h and r90 / h of an exponential disk


def draw(density, sub: int = 8) -> np.ndarray:
    """A [SIZE, SIZE] image of a surface density f(x, y) (per px^2, x and y in px from the centre),
    integrated over each pixel by sub x sub samples."""
    c = (SIZE - 1) / 2
    s = (np.arange(sub) + 0.5) / sub - 0.5
    y = (np.arange(SIZE)[:, None] + s[None, :]).ravel() - c
    yy, xx = np.meshgrid(y, y, indexing="ij")
    return density(xx, yy).reshape(SIZE, sub, SIZE, sub).mean(axis=(1, 3))


def gaussian(flux, sx, sy=None, angle=0.0):
    sy = sx if sy is None else sy
    ca, sa = np.cos(angle), np.sin(angle)

    def f(x, y):
        u, v = ca * x + sa * y, -sa * x + ca * y
        return flux / (2 * np.pi * sx * sy) * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return draw(f)


def exponential(flux, h):
    return draw(lambda x, y: flux / (2 * np.pi * h * h) * np.exp(-np.hypot(x, y) / h))


def sed_fluxes():
    return 10 ** (-0.4 * (SED_MAGS - 22.5))


def stack(image, fluxes=(1.0,) * 5):
    return np.stack([image * f for f in fluxes]).astype(np.float32)


@pytest.fixture(scope="module")
def analytic(tmp_path_factory):
    """One store of analytic profiles (one per object) and its photometry."""
    round_sed = stack(gaussian(1.0, SIGMA), sed_fluxes())
    nan = stack(gaussian(100.0, SIGMA))
    nan[1, 31:33, :] = np.nan  # a stripe through the centre of r (the mock's are 1-4 px wide)
    nan[2, 36:40, :] = np.nan  # one beside it in i
    nan[0, :, 10:12] = np.inf  # and a column in g
    no_z, no_r = stack(gaussian(100.0, SIGMA), sed_fluxes() / 100), stack(gaussian(100.0, SIGMA))
    no_z[3], no_r[1] = 0, 0
    noisy = stack(gaussian(100.0, SIGMA)) + np.random.default_rng(0).normal(0, 0.02, (5, SIZE, SIZE))
    images = np.stack([round_sed, stack(exponential(100.0, 2.5)), stack(gaussian(100.0, 4.0, 2.0, 0.5)), nan,
                       no_z, no_r, np.zeros((5, SIZE, SIZE)), noisy]).astype(np.float32)
    mask = np.ones((len(images), 5), bool)
    mask[4, 3] = mask[5, 1] = False
    path = tmp_path_factory.mktemp("phot") / "analytic.zarr"
    with create_store(path, image_shape=(SIZE, SIZE), pixel_scale=SCALE, dtype="float32") as w:
        w.append(np.arange(len(images)), np.full(len(images), 150.0), np.full(len(images), 2.0), images, mask)
    return path, measure_photometry(path, batch_size=3).to_pandas().set_index("object_id")


def test_columns_units_and_names_defined_once(analytic):
    path, t = analytic
    table = measure_photometry(path, rows=[0])
    assert table.column_names == ["object_id", *feature_names(BANDS)]
    assert table.schema.field("r50").metadata == {b"unit": b"arcsec"}
    assert table.schema.field("flux_total_g").metadata == {b"unit": b"nanomaggy"}
    assert table.schema.field("colour_g_r").metadata == {b"unit": b"mag"}
    assert {"colour_g_r", "colour_z_y", "fiber_colour_i_z", "mag_fiber_y", "axis_ratio"} <= set(t.columns)


def test_gaussian_total_flux_half_light_radius_and_fiber(analytic):
    _, t = analytic
    g = t.loc[0]
    fluxes = sed_fluxes()
    for b, f in zip(BANDS, fluxes, strict=True):
        assert g[f"flux_total_{b}"] == pytest.approx(f, rel=0.02)
        enclosed = 1 - np.exp(-((FIBER_DIAMETER / 2 / SCALE) ** 2) / (2 * SIGMA**2))
        assert g[f"flux_fiber_{b}"] == pytest.approx(f * enclosed, rel=0.01)
    assert g["r50"] == pytest.approx(GAUSS_R50 * SIGMA * SCALE, rel=0.05)
    assert g["concentration"] == pytest.approx(np.sqrt(np.log(10) / np.log(2)), rel=0.05)
    assert g["axis_ratio"] == pytest.approx(1.0, abs=0.01)


def test_colours_of_a_known_sed(analytic):
    _, t = analytic
    g = t.loc[0]
    for j, b in enumerate(BANDS):
        assert g[f"mag_total_{b}"] == pytest.approx(SED_MAGS[j], abs=0.02)
    for j in range(4):
        a, b = BANDS[j], BANDS[j + 1]
        assert g[f"colour_{a}_{b}"] == pytest.approx(SED_MAGS[j] - SED_MAGS[j + 1], abs=0.005)
        assert g[f"fiber_colour_{a}_{b}"] == pytest.approx(SED_MAGS[j] - SED_MAGS[j + 1], abs=0.005)


def test_exponential_profile_sizes_and_concentration(analytic):
    _, t = analytic
    e, h = t.loc[1], 2.5
    x = 0.45 * SIZE / h
    assert e["flux_total_r"] == pytest.approx(100 * (1 - (1 + x) * np.exp(-x)), rel=0.02)
    assert e["r50"] == pytest.approx(EXP_R50 * h * SCALE, rel=0.05)
    assert e["r90"] == pytest.approx(EXP_R90 * h * SCALE, rel=0.05)
    assert e["concentration"] == pytest.approx(EXP_R90 / EXP_R50, rel=0.05)
    assert e["concentration"] > t.loc[0, "concentration"] + 0.3  # an exponential is more concentrated


def test_axis_ratio_of_an_elliptical_profile(analytic):
    _, t = analytic
    assert t.loc[2, "axis_ratio"] == pytest.approx(0.5, abs=0.02)
    assert t.loc[2, "flux_total_r"] == pytest.approx(100, rel=0.02)


def test_nan_and_inf_pixels_are_filled_from_their_ring(analytic):
    _, t = analytic
    s = t.loc[3]
    for b in "gri":
        assert s[f"flux_total_{b}"] == pytest.approx(100, rel=0.02)
    assert s["r50"] == pytest.approx(GAUSS_R50 * SIGMA * SCALE, rel=0.05)
    assert s["axis_ratio"] == pytest.approx(1.0, abs=0.03)
    assert np.isfinite(t.loc[3].to_numpy()).all()


def test_a_missing_band_gives_nan_for_that_band_only(analytic):
    _, t = analytic
    z = t.loc[4]
    nan_cols = ["flux_total_z", "flux_fiber_z", "mag_total_z", "mag_fiber_z", "colour_i_z", "colour_z_y",
                "fiber_colour_i_z", "fiber_colour_z_y"]
    assert z[nan_cols].isna().all()
    assert z.drop(nan_cols).notna().all()
    assert z["colour_g_r"] == pytest.approx(SED_MAGS[0] - SED_MAGS[1], abs=0.01)
    r = t.loc[5]  # without r there are no shape features either
    assert r[["flux_total_r", "mag_total_r", "colour_g_r", "r50", "r90", "concentration",
              "axis_ratio"]].isna().all()
    assert np.isfinite(r[["flux_total_g", "colour_i_z", "mag_fiber_y"]].to_numpy()).all()


def test_blank_cutout_gives_finite_magnitudes_and_no_size(analytic):
    _, t = analytic
    blank = t.loc[6]
    assert blank["mag_total_r"] == pytest.approx(ASINH_ZERO_FLUX_MAG)
    assert blank[["r50", "concentration", "axis_ratio"]].isna().all()


def test_noisy_gaussian(analytic):
    _, t = analytic
    n = t.loc[7]
    assert n["flux_total_r"] == pytest.approx(100, rel=0.02)
    assert n["r50"] == pytest.approx(GAUSS_R50 * SIGMA * SCALE, rel=0.05)
    assert n["axis_ratio"] == pytest.approx(1.0, abs=0.05)


def test_asinh_magnitudes():
    flux = np.array([-5.0, -0.1, 0.0, 0.1, 1.0, 100.0, 1e4])
    m = asinh_mag(flux, 22.5)
    assert np.isfinite(m).all() and (np.diff(m) < 0).all()
    assert m[2] == pytest.approx(ASINH_ZERO_FLUX_MAG)
    assert m[5:] == pytest.approx(22.5 - 2.5 * np.log10(flux[5:]), abs=1e-4)
    assert asinh_mag(100 * 10**0.4, 23.5) == pytest.approx(17.5, abs=1e-4)  # another zero point


def test_rows_in_the_order_asked_and_batch_size_does_not_matter(analytic):
    path, t = analytic
    sub = measure_photometry(path, rows=np.array([5, 0, 2]), batch_size=2).to_pandas()
    assert sub["object_id"].tolist() == [5, 0, 2]
    np.testing.assert_allclose(sub.set_index("object_id").to_numpy(), t.loc[[5, 0, 2]].to_numpy(), rtol=1e-6,
                               atol=1e-6)  # a colour of 0 may come out as 4e-8 mag from float32 sums
    whole = measure_photometry(path).to_pandas().set_index("object_id")
    np.testing.assert_allclose(whole.to_numpy(), t.to_numpy(), rtol=1e-6, atol=1e-6)  # other float32 blocks
    with pytest.raises(InputError, match="repeat"):
        measure_photometry(path, rows=[1, 1])


def test_sparse_ring_matrix_of_large_cutouts_gives_the_same_features(analytic, monkeypatch):
    path, t = analytic
    monkeypatch.setattr(photometry, "MAX_DENSE_RINGS", 0)
    photometry.apertures.cache_clear()
    try:
        assert not isinstance(photometry.apertures((SIZE, SIZE), SCALE).rings, np.ndarray)
        sparse = measure_photometry(path).to_pandas().set_index("object_id")
    finally:
        photometry.apertures.cache_clear()
    np.testing.assert_allclose(sparse.to_numpy(), t.to_numpy(), rtol=1e-5, atol=1e-6)


def _store(path, **kw):
    shape = kw.pop("image_shape", (16, 16))
    bands = kw.get("bands", BANDS)
    with create_store(path, image_shape=shape, dtype="float32", **kw) as w:
        w.append([1], [150.0], [2.0], np.ones((1, len(bands), *shape), np.float32))
    return path


def test_bad_stores_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"counts.zarr has no zero point"):
        measure_photometry(_store(tmp_path / "counts.zarr", flux_unit="counts"))
    with pytest.raises(InputError, match=r"gi.zarr has no 'r' band"):
        measure_photometry(_store(tmp_path / "gi.zarr", bands=("g", "i")))
    with pytest.raises(InputError, match="too small"):
        measure_photometry(_store(tmp_path / "small.zarr", image_shape=(8, 8)))


def test_mock_survey_fiber_and_total_magnitudes_match_the_truth(tmp_path):
    simulate_survey(tmp_path / "m.zarr", tmp_path / "m.parquet", 120, image_size=32, seed=2)
    t = measure_photometry(tmp_path / "m.zarr")
    truth = pq.read_table(tmp_path / "m.parquet")
    rows = match_rows(t["object_id"].to_numpy(), truth["object_id"].to_numpy(), "photometry")
    fiber = t["mag_fiber_r"].to_numpy()[rows] - truth["truth_fiber_r_mag"].to_numpy()
    total = t["mag_total_r"].to_numpy()[rows] - truth["truth_r_mag"].to_numpy()
    # the fiber is the mock's own 3" aperture; 32 px (8") hold most, not all, of a galaxy's light
    assert abs(np.nanmedian(fiber)) < 0.02 and np.nanmedian(np.abs(fiber)) < 0.03
    assert 0 < np.nanmedian(total) < 0.5
    assert np.isfinite(t["r50"].to_numpy()).mean() > 0.95
