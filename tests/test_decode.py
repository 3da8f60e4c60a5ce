"""Decoded spectra: EW and D4000 on synthetic spectra, MC bands, the decode run, write-back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from scipy.special import erf

from galspec_batch.catalog import read_catalog
from galspec_batch.catalog.extension import read_extension, remove_extension
from galspec_batch.catalog.paths import derived_dir
from galspec_batch.cli import main
from galspec_batch.columns import D4000, DERIVED_COLUMNS, LINES
from galspec_batch.decode import (
    d4000,
    decode_catalog,
    decode_latents,
    derived_quantities,
    equivalent_width,
    read_decoded,
    sample_latents,
    window_weights,
)
from galspec_batch.errors import InputError
from galspec_batch.models.vae import SpectrumVAE, VAEArch
from galspec_batch.plots import plot_decoded_file
from galspec_batch.select import select_targets
from galspec_batch.spectra import N_BINS, WAVE, WAVE_EDGES
from galspec_batch.spectral_vae import TrainedVAE, VAESettings, decode, load_vae, save_vae

LINE = {w.name: w for w in LINES}


def gaussian_line(center: float, sigma: float, flux: float) -> np.ndarray:
    """A Gaussian line of total ``flux`` averaged over each grid pixel (flux-conserving)."""
    cdf = 0.5 * (1 + erf((WAVE_EDGES - center) / (np.sqrt(2) * sigma)))
    return flux * np.diff(cdf) / np.diff(WAVE_EDGES)


def continuum(a: float = 1.0, slope: float = 0.0) -> np.ndarray:
    """Pixel averages of ``a + slope * (lambda - 5000)``."""
    mid = 0.5 * (WAVE_EDGES[1:] + WAVE_EDGES[:-1])
    return a + slope * (mid - 5000.0)


def line_spectrum(name: str, ew: float, a: float = 1.0, slope: float = 0.0, sigma: float = 2.5) -> np.ndarray:
    w = LINE[name]
    c0 = a + slope * (w.center - 5000.0)
    return continuum(a, slope) + gaussian_line(w.center, sigma, ew * c0)


@pytest.mark.parametrize("name", [w.name for w in LINES])
@pytest.mark.parametrize("ew, slope", [(25.0, 0.0), (8.0, 1e-4), (-4.0, -5e-5)])
def test_equivalent_width_recovers_known_ew(name, ew, slope):
    flux = line_spectrum(name, ew, slope=slope)
    got = equivalent_width(flux, LINE[name])
    assert got == pytest.approx(ew, rel=0.02)
    assert equivalent_width(continuum(2.0, slope), LINE[name]) == pytest.approx(0.0, abs=1e-3)


def test_ew_is_scale_free_and_vectorised():
    flux = np.stack([line_spectrum("ew_halpha", 30.0), 7.0 * line_spectrum("ew_halpha", 30.0)])
    got = equivalent_width(flux[None], LINE["ew_halpha"])
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, 30.0, rtol=0.02)
    assert np.isnan(equivalent_width(-continuum(), LINE["ew_halpha"]))


def test_window_weights_cover_the_window():
    w = window_weights(6554.0, 6575.0)
    assert w.sum() == pytest.approx(21.0)
    assert (w > 0).sum() <= 6


@pytest.mark.parametrize("ratio", [1.0, 1.35, 2.1])
def test_d4000_of_a_step_spectrum(ratio):
    mid = 0.5 * (WAVE_EDGES[1:] + WAVE_EDGES[:-1])
    fnu = np.where(mid < 3975.0, 1.0, ratio)
    flam = 3.0 * fnu / mid**2
    assert d4000(flam) == pytest.approx(ratio, rel=1e-3)
    q = derived_quantities(np.stack([flam, flam]))
    assert set(q) == {w.name for w in LINES} | {D4000}
    np.testing.assert_allclose(q[D4000], ratio, rtol=1e-3)


def test_latent_draws_are_seeded_per_object():
    mean = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], np.float32)
    std = np.array([[1.0, 1.0], [0.5, 0.5], [0.0, 0.0]], np.float32)
    ids = np.array([10, 11, 12])
    z = sample_latents(mean, std, ids, 200, seed=3)
    assert z.shape == (3, 200, 2)
    np.testing.assert_array_equal(sample_latents(mean[1:2], std[1:2], ids[1:2], 200, seed=3)[0], z[1])
    np.testing.assert_array_equal(z[2], np.broadcast_to(mean[2], (200, 2)))
    assert abs(z[0].std(axis=0) - 1.0).max() < 0.15 and abs(z[1].mean(axis=0) - mean[1]).max() < 0.15
    assert not np.array_equal(sample_latents(mean, std, ids, 200, seed=4), z)


def make_vae(path, seed=0):
    """An untrained VAE whose mean spectrum has a 4000 A break and an Halpha line of EW 30 A."""
    torch.manual_seed(seed)
    mean = continuum(1.0) * np.where(WAVE < 3975, 0.8, 1.0) + gaussian_line(6564.6, 2.5, 30.0)
    mean = mean.astype(np.float32)
    vae = TrainedVAE(SpectrumVAE(VAEArch(n_latent=6)).eval(), mean, VAESettings(seed=seed))
    save_vae(vae, path)
    return path


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return make_vae(tmp_path_factory.mktemp("vae") / "vae")


def test_bands_widen_with_std_and_collapse_at_zero(vae_dir):
    vae = load_vae(vae_dir)
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 1, (4, 6)).astype(np.float32)
    std = np.full((4, 6), 0.3, np.float32)
    ids = np.arange(4)
    one = decode_latents(vae, mean, std, ids, n_draws=64)
    three = decode_latents(vae, mean, 3 * std, ids, n_draws=64)
    zero = decode_latents(vae, mean, 0 * std, ids, n_draws=64)
    assert (one.lo <= one.median).all() and (one.median <= one.hi).all()
    width1, width3 = (one.hi - one.lo).mean(axis=1), (three.hi - three.lo).mean(axis=1)
    assert (width1 > 0).all() and (width3 > 2.0 * width1).all()
    np.testing.assert_allclose(zero.lo, zero.hi, atol=1e-6)
    np.testing.assert_allclose(zero.median, decode(vae, mean), atol=1e-6)
    for name in ("ew_halpha", D4000):
        med, sd = zero.derived[name]
        np.testing.assert_allclose(med, derived_quantities(decode(vae, mean))[name], rtol=1e-5)
        np.testing.assert_allclose(sd, 0.0, atol=1e-6)
        assert (three.derived[name][1] > one.derived[name][1]).all()
    # the mean spectrum's line survives an untrained decoder's small perturbation
    assert abs(np.median(zero.derived["ew_halpha"][0]) - 30.0) < 10.0


def test_decode_catalog_ids(writable_catalog, vae_dir, tmp_path):
    ids = [1003, 1010, 1042, 1100]
    out = tmp_path / "spectra.parquet"
    s = decode_catalog(writable_catalog, vae_dir, out, ids=ids, n_draws=32)
    assert s.n_objects == 4 and s.derived is None
    t = pq.read_table(out)
    assert t["object_id"].to_pylist() == ids
    assert t.schema.field("flux_median").type.list_size == N_BINS
    assert set(DERIVED_COLUMNS) <= set(t.column_names)
    wave, sp, rest = read_decoded(out)
    np.testing.assert_allclose(wave, WAVE, rtol=1e-6)
    assert sp["median"].shape == (4, N_BINS)
    assert (sp["lo"] <= sp["median"] + 1e-6).all() and (sp["median"] <= sp["hi"] + 1e-6).all()
    meta = json.loads(pq.read_schema(out).metadata[b"galspec.decode"])
    assert meta["n_draws"] == 32 and meta["vae_weights_sha256"]
    cat = read_catalog(writable_catalog).to_pandas().set_index("object_id").loc[ids]
    np.testing.assert_allclose(rest["ra"].to_numpy(), cat.ra)
    np.testing.assert_array_equal(rest["z_phot"].to_numpy(), cat.z_phot.to_numpy(np.float32))
    np.testing.assert_array_equal(rest["z_phot_std"].to_numpy(), cat.z_phot_std.to_numpy(np.float32))
    assert np.isfinite(rest["d4000"].to_numpy()).all() and (rest["d4000_std"].to_numpy() > 0).all()
    # deterministic per object: decoding a superset gives the same spectra for these ids
    out2 = tmp_path / "more.parquet"
    decode_catalog(writable_catalog, vae_dir, out2, ids=ids + [1200], n_draws=32)
    _, sp2, _ = read_decoded(out2)
    np.testing.assert_array_equal(sp2["median"][:4], sp["median"])

    with pytest.raises(InputError, match=r"not in catalog .*\[5\]"):
        decode_catalog(writable_catalog, vae_dir, tmp_path / "x.parquet", ids=[1003, 5])
    with pytest.raises(FileExistsError):
        decode_catalog(writable_catalog, vae_dir, out, ids=ids)


def test_write_back_and_select(writable_catalog, vae_dir, tmp_path):
    df = read_catalog(writable_catalog).to_pandas()
    cut = float(df.latent_2.quantile(0.8))
    try:
        s = decode_catalog(writable_catalog, vae_dir, tmp_path / "a.parquet", where=f"latent_2 > {cut}",
                           n_draws=16,
                           write_back=True)
        assert s.derived == derived_dir(writable_catalog)
        decoded = pq.read_table(tmp_path / "a.parquet").to_pandas()
        assert sorted(decoded.object_id) == sorted(df[df.latent_2 > cut].object_id)
        thr = float(decoded.ew_halpha.median())
        t = select_targets(writable_catalog, where=f"ew_halpha > {thr}", allow_missing=True).to_pandas()
        assert sorted(t.object_id) == sorted(decoded[decoded.ew_halpha > thr].object_id)
        # a second decode merges by object_id
        decode_catalog(writable_catalog, vae_dir, tmp_path / "b.parquet", ids=[1000, 1001], n_draws=16,
                       write_back=True)
        side = read_extension(writable_catalog).to_pandas()
        assert sorted(side.object_id) == sorted(set(decoded.object_id) | {1000, 1001})
        assert list(side.columns) == ["object_id", *DERIVED_COLUMNS]
        # another VAE's quantities are not mixed in
        other = make_vae(tmp_path / "other", seed=1)
        with pytest.raises(InputError, match="another VAE"):
            decode_catalog(writable_catalog, other, tmp_path / "c.parquet", ids=[1002], n_draws=16,
                           write_back=True)
    finally:
        remove_extension(writable_catalog)


def test_cli_decode_with_plot(writable_catalog, vae_dir, tmp_path):
    out, fig = tmp_path / "s.parquet", tmp_path / "fig.png"
    r = CliRunner().invoke(main, ["decode", str(writable_catalog), "--vae", str(vae_dir), "--ids",
                                  "1004,1005,1006",
                                  "--draws", "16", "--out", str(out), "--plot", str(fig)])
    assert r.exit_code == 0, r.output
    assert "3 spectra" in r.output
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 20_000
    obs = tmp_path / "observed.png"
    r = CliRunner().invoke(main, ["decode", str(writable_catalog), "--vae", str(vae_dir), "--ids",
                                  "1004,1005", "--draws", "16", "--out", str(tmp_path / "o.parquet"),
                                  "--plot", str(obs), "--observed-frame"])
    assert r.exit_code == 0, r.output
    assert obs.stat().st_size > 20_000 and obs.read_bytes() != fig.read_bytes()
    # spectra without a redshift cannot be drawn in the observed frame
    t = pq.read_table(out)
    pq.write_table(t.drop_columns(["z_phot", "z_phot_std"]), tmp_path / "noz.parquet")
    with pytest.raises(InputError, match="no z_phot"):
        plot_decoded_file(tmp_path / "noz.parquet", tmp_path / "x.png", observed_frame=True)
    bad = CliRunner().invoke(main, ["decode", str(writable_catalog), "--vae", str(vae_dir), "--where",
                                    "latnt_2 > 0",
                                    "--out", str(tmp_path / "t.parquet")])
    assert bad.exit_code == 2 and "unknown column 'latnt_2'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_latent_draws_follow_the_calibrated_t_shape():
    from scipy import stats

    from galspec_batch.decode import sample_latents

    mean, std = np.zeros((4000, 2), np.float32), np.full((4000, 2), 2.0, np.float32)
    z = sample_latents(mean, std, np.arange(4000), 8, seed=1, nu=np.array([3.0, 1000.0])).reshape(-1, 2) / 2.0
    within = (np.abs(z) <= 1).mean(axis=0)
    np.testing.assert_allclose(within, 0.6827, atol=0.01)  # +-std holds 68.27% whatever the shape
    far = stats.t.ppf(0.99865, 3) / stats.t.ppf(0.841345, 3)  # the t(3) 3-sigma half-width in 1-sigmas
    assert (np.abs(z[:, 0]) > far).mean() == pytest.approx(0.0027, abs=0.001)
    assert (np.abs(z[:, 1]) > 3).mean() == pytest.approx(0.0027, abs=0.001)
    again = sample_latents(mean[:3], std[:3], np.arange(3), 8, seed=1, nu=np.array([3.0, 1000.0]))
    np.testing.assert_array_equal(again, sample_latents(mean, std, np.arange(4000), 8, seed=1,
                                                        nu=np.array([3.0, 1000.0]))[:3])
