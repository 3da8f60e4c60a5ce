"""The mock survey: determinism, physics that links image and spectrum, artifacts, outputs."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from galspec_batch.cli import main
from galspec_batch.columns import QualityFlag
from galspec_batch.errors import InputError
from galspec_batch.simulate import fiber, population, sed, simulate_batch, simulate_survey
from galspec_batch.simulate.survey import SURVEY_NAME, id_offset
from galspec_batch.sky import healpix_29
from galspec_batch.spectra import WAVE, WAVE_EDGES
from galspec_batch.spectra_table import read_spectra_table, spectra_arrays
from galspec_batch.store import open_store


def _batch(n, size=32, seed=0, **kw):
    idx = np.arange(n)
    return simulate_batch(idx, np.full(n, 150.0), np.full(n, 2.0), seed=seed, image_shape=(size, size), **kw)


@pytest.fixture(scope="module")
def batch64():
    return _batch(64, size=48)


def test_bit_identical_by_seed_and_different_across_seeds():
    a, b, c = _batch(12), _batch(12), _batch(12, seed=1)
    assert np.array_equal(a.images, b.images, equal_nan=True)
    assert np.array_equal(a.flux, b.flux) and np.array_equal(a.ivar, b.ivar)
    assert all(np.array_equal(a.truth[k], b.truth[k]) for k in a.truth)
    assert not np.allclose(a.truth["truth_z"], c.truth["truth_z"])
    assert not np.array_equal(a.object_id, c.object_id)


def test_objects_do_not_depend_on_the_batch_they_are_made_in():
    whole = _batch(20)
    idx = np.arange(20)
    parts = [simulate_batch(idx[s], np.full(len(idx[s]), 150.0), np.full(len(idx[s]), 2.0),
                            image_shape=(32, 32)) for s in (slice(0, 7), slice(7, 20))]
    assert np.array_equal(whole.images, np.concatenate([p.images for p in parts]), equal_nan=True)
    assert np.array_equal(whole.flux, np.concatenate([p.flux for p in parts]))
    assert np.array_equal(whole.ivar, np.concatenate([p.ivar for p in parts]))


def test_shapes_dtypes_and_spectrum_normalisation(batch64):
    b = batch64
    assert b.images.shape == (64, 5, 48, 48) and b.images.dtype == np.float32
    assert b.mask.shape == (64, 5) and b.mask.dtype == bool
    assert b.flux.shape == b.ivar.shape == (64, 1000) and b.flux.dtype == b.ivar.dtype == np.float32
    for f, w, z in zip(b.flux, b.ivar, b.z, strict=True):
        ok = w > 0
        assert f[ok].mean() == pytest.approx(1.0, abs=1e-4)
        # ivar is zero exactly where the observed wavelength leaves SDSS's 3800-9200 A
        obs = WAVE * (1 + z)
        assert np.array_equal(ok, (obs >= 3800) & (obs <= 9200))
        assert np.all(f[~ok] == 0)


def test_redshift_range_and_peak_like_sdss_main_sample():
    g = population.draw_galaxies(0, np.arange(20000))
    assert g.z.min() >= 0.01 and g.z.max() <= 0.35
    hist, edges = np.histogram(g.z, bins=np.arange(0.01, 0.36, 0.02))
    assert 0.07 <= edges[hist.argmax()] <= 0.13
    assert 0.09 < np.median(g.z) < 0.14


def test_halpha_equivalent_width_follows_disk_star_formation(batch64):
    b = batch64
    keep = ~b.truth["truth_anomaly"] & ~b.truth["truth_agn"]
    width = np.diff(WAVE_EDGES)
    line = (WAVE > 6555) & (WAVE < 6575)
    side = ((WAVE > 6480) & (WAVE < 6535)) | ((WAVE > 6610) & (WAVE < 6660))
    cont = np.array([np.median(f[side]) for f in b.flux])
    ew = ((b.flux[:, line] - cont[:, None]) * width[line]).sum(axis=1) / cont
    rho = spearmanr(ew[keep], b.truth["truth_sfr"][keep]).statistic
    assert rho > 0.8
    # strongly star-forming galaxies show Halpha in emission, passive ones do not
    assert np.median(ew[keep & (b.truth["truth_sfr"] > 30)]) > 20
    assert np.median(ew[keep & (b.truth["truth_sfr"] < 3)]) < 5


def test_bulge_dominated_galaxies_are_redder_in_their_images(batch64):
    b = batch64
    core = np.nan_to_num(b.images[:, :, 18:30, 18:30]).sum(axis=(2, 3))
    ok = (core[:, :2] > 0).all(axis=1) & b.mask[:, :2].all(axis=1)
    g_r = -2.5 * np.log10(core[ok, 0] / core[ok, 1])
    bt = b.truth["truth_bulge_frac"][ok]
    assert np.median(g_r[bt > 0.6]) - np.median(g_r[bt < 0.3]) > 0.2
    # and in the population at large, from the model's band fluxes
    g = population.draw_galaxies(3, np.arange(4000))
    comp = fiber.band_components(g, fiber.light(g))
    tot = comp.bulge + comp.disk + comp.struct + comp.point
    colour = -2.5 * np.log10(tot[:, 0] / tot[:, 1])
    assert spearmanr(colour, g.bulge_frac).statistic > 0.5


def test_magnitudes_are_those_of_a_bright_spectroscopic_sample_and_the_images_hold_them(batch64):
    b = batch64
    r = b.truth["truth_r_mag"]
    assert r.min() > 13.5 and r.max() < 18.5
    assert np.all(b.truth["truth_fiber_r_mag"] > r)
    # images are in nanomaggies: the light of small galaxies in the stamp matches their magnitude
    small = (b.truth["truth_re_disk_arcsec"] < 2.0) & b.mask[:, 1]
    stamp_r = np.nansum(b.images[small, 1], axis=(1, 2))
    ratio = stamp_r / 10 ** (-0.4 * (r[small] - 22.5))
    assert 0.8 < np.median(ratio) < 1.1


def test_anomaly_rate_and_anomalies_change_only_the_spectrum():
    flagged = population.draw_anomaly(0, np.arange(200_000), 0.01)
    assert flagged.mean() == pytest.approx(0.01, abs=0.001)
    assert np.array_equal(population.draw_galaxies(0, np.arange(5000)).anomaly, flagged[:5000])
    normal, odd = _batch(10, anomaly_rate=0.0), _batch(10, anomaly_rate=1.0)
    assert odd.truth["truth_anomaly"].all() and not normal.truth["truth_anomaly"].any()
    assert np.array_equal(normal.images, odd.images, equal_nan=True)
    assert np.abs(normal.flux - odd.flux).max(axis=1).min() > 0.1


def test_artifacts_nan_stripes_and_missing_bands():
    b = _batch(400, size=16)
    nan_objects = np.isnan(b.images).any(axis=(1, 2, 3))
    missing = ~b.mask
    assert 2 <= nan_objects.sum() <= 40
    assert 1 <= missing.any(axis=1).sum() <= 20
    assert np.all(b.images[missing] == 0)
    # a NaN stripe is whole rows or columns of one band
    k = np.flatnonzero(nan_objects)[0]
    band = np.flatnonzero(np.isnan(b.images[k]).any(axis=(1, 2)))
    stripe = np.isnan(b.images[k, band[0]])
    assert len(band) == 1 and (stripe.all(axis=0).any() or stripe.all(axis=1).any())


def test_line_band_fluxes_match_speclite_for_a_narrow_line():
    z = np.array([0.1])
    flux = np.zeros((1, len(sed.LINE_NAMES)))
    flux[0, sed.LINE_NAMES.index("Halpha")] = 1e-13
    ours = sed.line_band_fluxes(flux, z)[0]
    wave = np.linspace(6000, 8000, 20001)
    centre, sigma = 6564.61 * 1.1, 2.0
    f_lambda = 1e-13 * sed.distance_dimming(z)[0] * np.exp(-0.5 * ((wave - centre) / sigma) ** 2) / (
        sigma * np.sqrt(2 * np.pi))
    padded, padded_wave = sed.filters().pad_spectrum(f_lambda, wave)
    ref = sed.filters().get_ab_maggies(padded, padded_wave)
    ref = np.array([ref[name][0] for name in ref.colnames])
    assert ours[2] == pytest.approx(ref[2], rel=0.01)  # Halpha at 7221 A lies in i
    assert ours[0] == 0 and ref[0] == pytest.approx(0, abs=1e-20)


def test_survey_writes_sorted_store_and_matching_spectra_table(tmp_path):
    s = simulate_survey(tmp_path / "s.zarr", tmp_path / "s.parquet", 40, image_size=32, seed=5, batch_size=16,
                        field=(30.0, -10.0, 0.5))
    assert s.n_objects == 40
    st = open_store(tmp_path / "s.zarr")
    assert st.survey == SURVEY_NAME and st.bands == ("g", "r", "i", "z", "y") and st.image_shape == (32, 32)
    assert st.n_objects == 40 and st.attrs.zero_points == {b: 22.5 for b in "grizy"}
    assert np.all(np.diff(st.healpix_29) >= 0)
    assert np.all(st.object_id >= id_offset(5)) and len(np.unique(st.object_id)) == 40
    sep = np.rad2deg(np.arccos(np.clip(np.sin(np.deg2rad(st.dec)) * np.sin(np.deg2rad(-10.0))
                                       + np.cos(np.deg2rad(st.dec)) * np.cos(np.deg2rad(-10.0))
                                       * np.cos(np.deg2rad(st.ra - 30.0)), -1, 1)))
    assert sep.max() <= 0.5
    table = read_spectra_table(tmp_path / "s.parquet")
    assert set(table["object_id"].to_numpy()) == set(st.object_id)
    for col in ("truth_z", "truth_bulge_frac", "truth_sfr", "truth_anomaly"):
        assert col in table.column_names
    assert np.array_equal(table["z"].to_numpy(), table["truth_z"].to_numpy())
    assert np.array_equal(healpix_29(table["ra"].to_numpy(), table["dec"].to_numpy()), st.healpix_29)
    # the same survey in other batches is the same survey
    simulate_survey(tmp_path / "t.zarr", tmp_path / "t.parquet", 40, image_size=32, seed=5, batch_size=40,
                    field=(30.0, -10.0, 0.5))
    other = open_store(tmp_path / "t.zarr")
    assert np.array_equal(st.read(np.arange(40)).images, other.read(np.arange(40)).images, equal_nan=True)
    f1, _ = spectra_arrays(table)
    f2, _ = spectra_arrays(read_spectra_table(tmp_path / "t.parquet"))
    assert np.array_equal(f1, f2)
    flags = st.flags
    assert np.array_equal(flags & QualityFlag.MISSING_BAND > 0, ~st.mask.all(axis=1))
    with pytest.raises(FileExistsError):
        simulate_survey(tmp_path / "s.zarr", tmp_path / "u.parquet", 4, image_size=16)
    with pytest.raises(InputError):
        simulate_survey(tmp_path / "v.zarr", tmp_path / "v.parquet", 0)


def test_cli_simulate_with_plot(tmp_path):
    png = tmp_path / "mock.png"
    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "c.zarr"), "--out-spectra",
                                       str(tmp_path / "c.parquet"), "-n", "12", "--image-size", "32",
                                       "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "12 mock galaxies" in result.output
    assert png.stat().st_size > 20_000
    again = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "c.zarr"), "--out-spectra",
                                      str(tmp_path / "c.parquet"), "-n", "4"])
    assert again.exit_code == 2 and "already exists" in again.output
