"""The mock survey: determinism, physics that links image and spectrum, artifacts, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from galspec_batch.cli import main
from galspec_batch.columns import NORM, NORM_UNIT, QualityFlag
from galspec_batch.errors import InputError
from galspec_batch.simulate import (
    dust,
    fiber,
    images,
    kinematics,
    population,
    sed,
    simulate_batch,
    simulate_survey,
)
from galspec_batch.simulate.survey import SURVEY_NAME, id_offset
from galspec_batch.sky import healpix_29
from galspec_batch.spectra import WAVE, WAVE_EDGES
from galspec_batch.spectra_table import GRID_KEY, read_spectra_table, spectra_arrays
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


def test_norm_undoes_the_normalisation_in_sdss_units(batch64):
    """flux * norm is SDSS's rest-frame (1+z) f_lambda in 1e-17 erg/s/cm^2/A: shifted back to the
    observed frame, its synthetic r magnitude is the fiber's."""
    b = batch64
    assert b.norm.shape == (64,) and 1 < np.median(b.norm) < 100  # like SDSS main-sample galaxies
    obs_wave = WAVE[None, :] * (1 + b.z[:, None])
    f_obs = b.flux * b.norm[:, None] * 1e-17 / (1 + b.z[:, None])
    bands = sed.filters()
    r = [bands.get_ab_maggies(*bands.pad_spectrum(f, w)).columns[1][0]
         for f, w in zip(f_obs, obs_wave, strict=True)]
    np.testing.assert_allclose(-2.5 * np.log10(r), b.truth["truth_fiber_r_mag"], atol=0.02)


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
    assert table.column_names[6] == NORM and (table[NORM].to_numpy() > 0).all()
    assert table.schema.field(NORM).metadata[b"unit"] == NORM_UNIT.encode()
    assert np.array_equal(json.loads(table.schema.field("flux").metadata[GRID_KEY])["wave"], WAVE)
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


# ---- the physics that makes morphology informative (issue 11) ----

@pytest.fixture(scope="module")
def population3000():
    """3000 galaxies with their light, band fluxes and galaxy-integrated (noise-free) spectra."""
    g = population.draw_galaxies(0, np.arange(3000))
    lt = fiber.light(g)
    return g, lt, fiber.band_components(g, lt), fiber.model_spectra(g, lt, np.ones((3000, 4)))


def _line_flux(spec, centre, half=10.0, side=40.0):
    """Continuum-subtracted line flux and the continuum beside the line."""
    line = np.abs(WAVE - centre) < half
    band = (np.abs(WAVE - centre) > half + 15) & (np.abs(WAVE - centre) < half + 15 + side)
    cont = np.median(spec[:, band], axis=1)
    return ((spec[:, line] - cont[:, None]) * np.diff(WAVE_EDGES)[line]).sum(axis=1), cont


def test_extinction_curve_and_dust_geometries():
    v_band = 1e4 / 1.82  # A_lambda / A_V = 1 there
    k = dust.extinction_curve(np.array([4862.68, v_band, 6564.61]))
    assert k == pytest.approx([1.164, 1.0, 0.818], abs=0.005)  # Cardelli et al. (1989), R_V = 3.1
    wave = np.array([v_band])
    out = dust.transmission(wave, np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))[:, 0]
    assert out == pytest.approx([1.0, np.exp(-1), 1 - np.exp(-1), (1 + np.exp(-1)) / 2], rel=1e-3)


def test_band_fluxes_match_speclite():
    t = sed.templates()
    coeff, z = t.coeff[[0, 400, 749]], np.array([0.02, 0.12, 0.3])
    ours = sed.band_fluxes(coeff, z)
    for k in range(3):
        f = (coeff[k] @ t.basis) / (1 + z[k]) * sed.distance_dimming(z[k : k + 1])[0]
        ref = sed.filters().get_ab_maggies(f, t.wave * (1 + z[k]))
        assert ours[k] == pytest.approx([ref[name][0] for name in ref.colnames], rel=2e-3)


def test_edge_on_disks_are_redder_and_have_a_higher_balmer_decrement(population3000):
    g, lt, comp, spec = population3000
    halpha, cont = _line_flux(spec, sed.LINES["Halpha"])
    hbeta, _ = _line_flux(spec, sed.LINES["Hbeta"])
    sf_disk = (g.bulge_frac < 0.5) & ~g.passive & ~g.agn & (halpha / cont > 10)
    face, edge = sf_disk & (g.cos_i > 0.7), sf_disk & (g.cos_i < 0.3)
    assert face.sum() > 200 and edge.sum() > 200
    decrement = halpha / hbeta
    assert np.median(decrement[edge]) > 1.1 * np.median(decrement[face])
    total = comp.bulge + comp.disk + comp.struct + comp.point
    g_r = -2.5 * np.log10(total[:, 0] / total[:, 1])
    assert np.median(g_r[edge]) - np.median(g_r[face]) > 0.08
    assert np.median(lt.av[edge]) > 2 * np.median(lt.av[face])
    assert np.all(lt.av[g.passive & (g.bulge_frac > 0.99)] < 1e-6)  # no dust without a star-forming disk


def test_passive_fraction_and_quenching_follow_bulge_and_luminosity(population3000):
    g, lt, _, _ = population3000
    sfr = fiber.star_formation_ew(lt)
    assert 0.3 < np.mean(sfr < 3) < 0.5  # SDSS main sample: ~35-45% with EW(Halpha) < 3 A
    assert np.array_equal(sfr < 1e-9, g.passive)
    bt = g.bulge_frac
    assert g.passive[bt > 0.6].mean() > 0.7 > 0.2 > g.passive[bt < 0.2].mean()
    bright, faint = g.abs_mag_r < -22, g.abs_mag_r > -20.5
    assert g.passive[bright].mean() > g.passive[faint].mean() + 0.2
    # a few passive galaxies quenched recently: A-star-rich disks (strong Hdelta absorption)
    psb = g.post_starburst
    assert psb.any() and np.all(g.passive[psb]) and psb.sum() < 0.1 * g.passive.sum()
    t = sed.templates()
    strong = t.coeff[np.argsort(-t.hdelta)[: sed.POST_STARBURST_ARCHETYPES]]
    assert all((np.abs(strong - c).sum(axis=1) < 1e-12).any() for c in g.coeff_disk[psb])


def test_star_formation_shows_where_the_image_shows_blue_structure():
    g = population.draw_galaxies(0, np.arange(600))
    keep = np.flatnonzero(~g.passive & ~g.agn & ~g.anomaly)[:200]
    g = population.draw_galaxies(0, keep)
    lt = fiber.light(g)
    comp = fiber.band_components(g, lt)
    rendered = images.render(g, comp, 0, (32, 32), 0.25)
    spec = fiber.model_spectra(g, lt, rendered.fiber_frac)
    halpha, cont = _line_flux(spec, sed.LINES["Halpha"])
    # the structure's share of the r-band light inside the fiber sets the fiber's Halpha EW
    r_band = np.stack([comp.bulge[:, 1], comp.disk[:, 1], comp.struct[:, 1]], axis=1)
    in_fiber = r_band * rendered.fiber_frac[:, :3]
    share = in_fiber[:, 2] / in_fiber.sum(axis=1)
    assert spearmanr(share, halpha / cont).statistic > 0.75
    # without the structure in the fiber only the old stars' weak emission remains
    no_struct = rendered.fiber_frac.copy()
    no_struct[:, 2] = 0
    rest, rest_cont = _line_flux(fiber.model_spectra(g, lt, no_struct), sed.LINES["Halpha"])
    assert np.percentile(rest / rest_cont, 95) < 3 < np.median(halpha / cont)


def test_velocity_dispersion_broadens_the_lines_and_the_stars(population3000):
    g, _, _, spec = population3000
    sigma_v = kinematics.fiber_dispersion(g.bulge_frac, g.sigma_bulge, g.sigma_disk)
    lo, hi = np.percentile(sigma_v, [5, 95])
    assert 50 < lo and hi < 300
    halpha, cont = _line_flux(spec, sed.LINES["Halpha"])
    lines = ~g.passive & ~g.agn & (halpha / cont > 10)
    core = np.abs(WAVE - sed.LINES["Halpha"]) < 8
    excess = spec[lines][:, core] - cont[lines, None]
    width = np.sqrt((excess * (WAVE[core] - sed.LINES["Halpha"]) ** 2).sum(axis=1) / excess.sum(axis=1))
    assert spearmanr(width, sigma_v[lines]).statistic > 0.6
    # the stellar continuum: Ca II K is shallower at 300 km/s than unbroadened
    old = np.column_stack([sed.templates().archetype(np.array([0.9])), [[0.0]]])
    spectra = kinematics.continuum(np.repeat(old, 2, axis=0), np.array([0.0, 300.0]))
    k = np.abs(WAVE - 3934.8).argmin()
    depth = 1 - spectra[:, k] / spectra[:, k + 8]
    assert depth[1] < 0.9 * depth[0]


def test_mergers_have_tidal_features_starbursts_and_more_agn(population3000):
    g, lt, _, _ = population3000
    sfr = fiber.star_formation_ew(lt)
    assert 0.02 < g.merger.mean() < 0.06 and not (g.merger & g.passive).any()
    assert np.median(sfr[g.merger]) > 2 * np.median(sfr[~g.merger])
    many = population.draw_galaxies(0, np.arange(100_000))
    assert many.agn[many.merger].mean() > 1.8 * many.agn[~many.merger].mean()
    # the image: more flux off-centre and asymmetric (smoothed, inside 5 r_e or 6")
    idx = np.concatenate([np.flatnonzero(g.merger)[:80], np.flatnonzero(~g.merger)[:80]])
    b = simulate_batch(idx, np.zeros(160), np.zeros(160), image_shape=(48, 48))
    assert b.truth["truth_merger"][:80].all() and not b.truth["truth_merger"][80:].any()
    ok = b.mask[:, 1]  # r band present
    r = gaussian_filter(np.nan_to_num(b.images[ok, 1]), (0, 1.5, 1.5))
    yy, xx = np.mgrid[:48, :48] - 23.5
    radius = np.hypot(yy, xx) * 0.25
    asym = np.array([np.abs(im - im[::-1, ::-1])[radius < min(5 * re, 6.0)].sum()
                     / np.abs(im)[radius < min(5 * re, 6.0)].sum()
                     for im, re in zip(r, b.truth["truth_re_disk_arcsec"][ok], strict=True)])
    merger = b.truth["truth_merger"][ok]
    assert np.median(asym[merger]) > np.median(asym[~merger]) + 0.04


def test_new_physics_is_deterministic_and_batch_independent():
    g = population.draw_galaxies(0, np.arange(400))
    idx = np.unique(np.concatenate([np.flatnonzero(g.merger)[:4], np.flatnonzero(g.post_starburst)[:2],
                                    np.flatnonzero(g.agn)[:2], np.arange(6)]))
    n = len(idx)
    whole = simulate_batch(idx, np.zeros(n), np.zeros(n), image_shape=(24, 24), anomaly_rate=0.3)
    parts = [simulate_batch(idx[s], np.zeros(len(idx[s])), np.zeros(len(idx[s])), image_shape=(24, 24),
                            anomaly_rate=0.3) for s in (slice(0, 3), slice(3, 4), slice(4, n))]
    assert whole.truth["truth_merger"].sum() >= 4 and whole.truth["truth_anomaly"].any()
    assert np.array_equal(whole.images, np.concatenate([p.images for p in parts]), equal_nan=True)
    assert np.array_equal(whole.flux, np.concatenate([p.flux for p in parts]))
    for key in ("truth_av", "truth_sigma_v", "truth_cos_i", "truth_passive", "truth_sfr"):
        assert np.array_equal(whole.truth[key], np.concatenate([p.truth[key] for p in parts]))
