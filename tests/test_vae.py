"""The spectrum VAE on a synthetic 4-parameter family: smooth continua (slope, 4000 A break) plus
emission lines (H-alpha equivalent width, [OIII]/H-beta ratio) with known Gaussian noise."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from scipy.special import erf

from galspec_batch.cli import main
from galspec_batch.errors import InputError, MissingFileError
from galspec_batch.models.vae import SpectrumVAE, VAEArch, gaussian_kl, infovae_loss, mmd_rbf
from galspec_batch.spectra import WAVE, WAVE_EDGES
from galspec_batch.spectra_table import spectra_to_table, write_spectra_table
from galspec_batch.spectral_vae import (
    VAESettings,
    chi2_per_dof,
    decode,
    encode,
    fit_vae,
    load_vae,
    pixel_weights,
    save_vae,
    validate_spectra,
)

LINES = {"OII": 3727.4, "Hbeta": 4862.7, "OIII": 5008.2, "Halpha": 6564.6}
NOISE = 0.05  # sigma at unit flux: S/N 20 per pixel


def _line_profile(center: float, sigma_kms: float = 120.0) -> np.ndarray:
    s = center * sigma_kms / 3e5
    cdf = 0.5 * (1 + erf((WAVE_EDGES - center) / (np.sqrt(2) * s)))
    return np.diff(cdf) / np.diff(WAVE_EDGES)


def synth(n: int, seed: int):
    """(observed flux, ivar, noiseless flux): unit mean, blue end masked as if observed at z < 0.3."""
    rng = np.random.default_rng(seed)
    slope, brk = rng.uniform(-1, 1, n), rng.uniform(0, 0.6, n)
    ew_ha, o3 = rng.uniform(0, 60, n), rng.uniform(0.3, 3.0, n)
    cont = np.exp(slope[:, None] * np.log(WAVE / 5500))
    cont *= 1 - brk[:, None] / (1 + np.exp((WAVE - 4000) / 30))
    ew = {"Halpha": ew_ha, "Hbeta": ew_ha * 0.28, "OIII": ew_ha * 0.35 * o3, "OII": ew_ha * 0.6}
    flux = cont.copy()
    for name, c in LINES.items():
        flux += (ew[name] * cont[:, np.argmin(abs(WAVE - c))])[:, None] * _line_profile(c)
    flux /= flux.mean(axis=1, keepdims=True)
    sigma = NOISE * np.sqrt(np.clip(flux, 0.05, None))
    ivar = 1 / sigma**2
    obs = flux + rng.normal(size=flux.shape) * sigma
    masked = WAVE < 3800 / (1 + rng.uniform(0, 0.3, n))[:, None]
    ivar[masked], obs[masked] = 0, np.nan
    return obs.astype(np.float32), ivar.astype(np.float32), flux.astype(np.float32)


def line_ew(flux: np.ndarray, center: float) -> np.ndarray:
    """Equivalent width (A) over 7 pixels around the line, continuum from the median of sidebands."""
    i = int(np.argmin(abs(WAVE - center)))
    cont = np.median(flux[:, np.r_[i - 16 : i - 6, i + 7 : i + 17]], axis=1)
    sl = slice(i - 3, i + 4)
    return ((flux[:, sl] - cont[:, None]) * np.diff(WAVE_EDGES)[sl]).sum(axis=1) / cont


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    flux, ivar, _ = synth(1200, seed=0)
    return fit_vae(flux, ivar, settings=VAESettings(epochs=40, patience=10)), flux, ivar


@pytest.fixture(scope="module")
def held_out():
    return synth(400, seed=1)


def test_reconstruction_reaches_noise_level(trained, held_out):
    vae, _, _ = trained
    flux, ivar, truth = held_out
    rec = decode(vae, encode(vae, flux, ivar))
    chi2 = np.median(chi2_per_dof(flux, ivar, rec))
    floor = np.median(chi2_per_dof(flux, ivar, truth))  # the noise itself: about 1
    # measured 1.10 against a floor of 1.00: 6 latents for a 4-parameter family leave ~0.3 sigma residuals
    assert 0.9 < floor < 1.1
    assert chi2 < 1.25 * floor
    assert vae.meta["val_chi2_dof_median"] < 1.3


def test_decoded_spectra_keep_emission_lines(trained, held_out):
    vae, _, _ = trained
    flux, ivar, truth = held_out
    rec = decode(vae, encode(vae, flux, ivar))
    for name, center in LINES.items():
        true_ew, rec_ew = line_ew(truth, center), line_ew(rec, center)
        assert np.corrcoef(true_ew, rec_ew)[0, 1] > 0.95, name  # measured > 0.99 for all four
        assert np.median(np.abs(rec_ew - true_ew)) < 0.1 * np.median(true_ew) + 0.5, name


def _aggregate_posterior(vae, flux, ivar) -> tuple[torch.Tensor, torch.Tensor]:
    """(one draw of q(z) per spectrum, the latent means)."""
    x = torch.from_numpy(np.where(ivar > 0, flux - vae.mean_spectrum, 0).astype(np.float32))
    with torch.no_grad():
        mu, logvar = vae.model.encode(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    return mu + eps * (0.5 * logvar).exp(), mu


def test_mmd_pulls_latents_to_standard_normal(trained):
    vae, flux, ivar = trained
    z, mu = _aggregate_posterior(vae, flux, ivar)
    np.testing.assert_array_equal(mu.numpy(), encode(vae, flux, ivar))
    prior = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    # lam = 1000 (default): measured |mean| <= 0.08, std 0.52-1.16, MMD 0.010, all six latent means used
    assert torch.all(z.mean(0).abs() < 0.15) and torch.all((z.std(0) > 0.4) & (z.std(0) < 1.3))
    assert torch.all(mu.std(0) > 0.3)
    mmd = float(mmd_rbf(z, prior))
    # lam = 1 (MMD weight 0, a plain VAE): measured offsets up to 0.36, MMD 0.044
    plain = fit_vae(flux, ivar, settings=VAESettings(epochs=40, patience=10, lam=1.0))
    assert mmd < 0.5 * float(mmd_rbf(_aggregate_posterior(plain, flux, ivar)[0], prior))


def test_masked_pixels_do_not_matter(trained, held_out):
    vae, _, _ = trained
    flux, ivar, _ = held_out
    other = np.where(ivar > 0, flux, 123.0).astype(np.float32)
    np.testing.assert_array_equal(encode(vae, flux, ivar), encode(vae, other, ivar))


def test_infovae_loss_terms():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 6, generator=g), torch.randn(500, 6, generator=g)
    assert float(mmd_rbf(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd_rbf(a, b)) < 0.01 < float(mmd_rbf(a + 1.0, b))
    assert torch.allclose(gaussian_kl(torch.zeros(3, 6), torch.zeros(3, 6)), torch.zeros(3))
    assert float(gaussian_kl(torch.ones(1, 2), torch.zeros(1, 2))[0]) == pytest.approx(1.0)
    x, w = torch.ones(4, 10), torch.full((4, 10), 2.0)
    z, mu, logvar = a[:4] + 1, a[:4], torch.zeros(4, 6)
    loss = infovae_loss(x, w, torch.zeros(4, 10), z, mu, logvar, b[:4], alpha=0.0, lam=10.0)
    assert float(loss.recon) == pytest.approx(10.0)  # 0.5 * sum(w * 1) per spectrum
    assert float(loss.total) == pytest.approx(float(loss.recon + loss.kl + 9.0 * loss.mmd))


def test_architecture_is_portillo():
    model = SpectrumVAE(VAEArch())
    sizes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [(1000, 549), (549, 110), (110, 6), (110, 6), (6, 110), (110, 549), (549, 1000)]
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in model.modules())


def test_pixel_weights_soft_clip():
    w = pixel_weights(np.array([0.0, 1.0, 1e8]), floor=0.01)
    assert w[0] == 0 and w[1] == pytest.approx(1.0, rel=1e-3) and w[2] == pytest.approx(1e4, rel=1e-3)


def test_save_load_bit_identical(trained, held_out, tmp_path):
    vae, _, _ = trained
    save_vae(vae, tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae")
    for k, v in vae.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    np.testing.assert_array_equal(vae.mean_spectrum, loaded.mean_spectrum)
    flux, ivar, _ = held_out
    np.testing.assert_array_equal(encode(vae, flux, ivar), encode(loaded, flux, ivar))
    cfg = json.loads((tmp_path / "vae" / "vae.json").read_text())
    assert cfg["arch"]["n_latent"] == 6 and cfg["training"]["lam"] == 1000.0
    assert len(cfg["meta"]["data_hash"]) == 64 and "code_version" in cfg["meta"]
    assert len(loaded.history) == vae.meta["epochs_run"]
    with pytest.raises(FileExistsError):
        save_vae(vae, tmp_path / "vae")


def test_training_is_deterministic():
    flux, ivar, _ = synth(200, seed=3)
    s = VAESettings(epochs=2)
    a, b = fit_vae(flux, ivar, settings=s), fit_vae(flux, ivar, settings=s)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    c = fit_vae(flux, ivar, settings=VAESettings(epochs=2, seed=1))
    assert not torch.equal(a.model.decoder[0].weight, c.model.decoder[0].weight)


def _write_table(path, flux, ivar, ids=None):
    n = len(flux)
    ids = np.arange(100, 100 + n) if ids is None else ids
    write_spectra_table(path, spectra_to_table(ids, np.zeros(n), np.zeros(n), np.zeros(n), flux, ivar))


def test_cli_round_trip(tmp_path):
    flux, ivar, _ = synth(300, seed=4)
    _write_table(tmp_path / "spectra.parquet", flux, ivar)
    run = CliRunner().invoke
    r = run(main, ["vae", "train", "--spectra", str(tmp_path / "spectra.parquet"),
                   "--out", str(tmp_path / "vae"), "--latents", "4", "--epochs", "3"])
    assert r.exit_code == 0, r.output
    assert "best epoch" in r.output and (tmp_path / "vae" / "metrics.csv").exists()
    vae_arg = ["--vae", str(tmp_path / "vae")]
    r = run(main, ["vae", "encode", *vae_arg, "--spectra", str(tmp_path / "spectra.parquet"),
                   "--out", str(tmp_path / "labels.parquet")])
    assert r.exit_code == 0, r.output
    labels = pq.read_table(tmp_path / "labels.parquet")
    assert labels.column_names == ["object_id", "latent_1", "latent_2", "latent_3", "latent_4", "z"]
    assert "4 latents and the redshift z" in r.output
    assert labels["object_id"].to_pylist() == list(range(100, 400))
    assert str(labels.schema.field("latent_1").type) == "float"
    r = run(main, ["vae", "decode", *vae_arg, "--labels", str(tmp_path / "labels.parquet"),
                   "--out", str(tmp_path / "decoded.parquet")])
    assert r.exit_code == 0, r.output
    decoded = pq.read_table(tmp_path / "decoded.parquet")
    vae = load_vae(tmp_path / "vae")
    expected = decode(vae, encode(vae, flux, ivar))
    got = np.stack(decoded["flux"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got, expected)


def test_bad_input_gives_clear_errors(tmp_path, trained):
    flux, ivar, _ = synth(20, seed=5)
    bad = flux.copy()
    bad[3, 500] = np.nan
    with pytest.raises(InputError, match="NaN or infinite where ivar > 0.*object_id 7"):
        validate_spectra(bad, ivar, object_id=np.arange(4, 24))
    with pytest.raises(InputError, match=r"expected \(n_spectra, 1000\)"):
        validate_spectra(flux[:, :999], ivar[:, :999])
    neg = ivar.copy()
    neg[0, 0] = -1
    with pytest.raises(InputError, match="ivar must be finite and >= 0"):
        validate_spectra(flux, neg)
    with pytest.raises(InputError, match="no valid pixel"):
        validate_spectra(flux, np.where(np.arange(20)[:, None] == 2, 0, ivar))
    vae = trained[0]
    with pytest.raises(InputError, match=r"expected \(n, 6\)"):
        decode(vae, np.zeros((2, 5)))

    save_vae(vae, tmp_path / "vae")
    run = CliRunner().invoke
    vae_arg = ["--vae", str(tmp_path / "vae")]
    ids = np.arange(100, 120)
    ids[5] = 100
    zeros = np.zeros(20)
    pq.write_table(spectra_to_table(ids, zeros, zeros, zeros, flux, ivar), tmp_path / "dup_s.parquet")
    r = run(main, ["vae", "encode", *vae_arg, "--spectra", str(tmp_path / "dup_s.parquet"),
                   "--out", str(tmp_path / "l.parquet")])
    assert r.exit_code == 1 and "duplicate object ids [100]" in r.output
    assert not (tmp_path / "l.parquet").exists()

    _write_table(tmp_path / "s.parquet", flux, ivar)
    r = run(main, ["vae", "encode", *vae_arg, "--spectra", str(tmp_path / "s.parquet"),
                   "--out", str(tmp_path / "l.parquet")])
    assert r.exit_code == 0, r.output
    labels = pq.read_table(tmp_path / "l.parquet")
    pq.write_table(pa.concat_tables([labels.slice(0, 3), labels.slice(0, 3)]), tmp_path / "dup_l.parquet")
    decode_args = ["vae", "decode", "--out", str(tmp_path / "d.parquet")]
    r = run(main, [*decode_args, *vae_arg, "--labels", str(tmp_path / "dup_l.parquet")])
    assert r.exit_code == 1 and "duplicate object ids [100, 101, 102]" in r.output
    r = run(main, [*decode_args, *vae_arg, "--labels", str(tmp_path / "s.parquet")])
    assert r.exit_code == 1 and "lacks columns ['latent_1'" in r.output
    r = run(main, [*decode_args, "--vae", str(tmp_path / "nowhere"), "--labels", str(tmp_path / "l.parquet")])
    assert r.exit_code == 1 and "is not a VAE directory" in r.output
    with pytest.raises(MissingFileError):
        load_vae(tmp_path / "nowhere")
