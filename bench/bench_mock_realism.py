"""How much like real galaxies the mock survey's spectra are, and what its population looks like.

    python bench/bench_mock_realism.py [--n 3500] [--seed 0] [--image-size 16]

Simulates ``--n`` mock galaxies (small cutouts: only the fiber spectra are used, and the fiber
light fractions do not depend on the cutout size), trains the spectrum VAE on their spectra
(``fit_vae``, default settings), and reconstructs the eight real SDSS spectra in
tests/data/sdss_spectra. Prints per real spectrum chi2/dof of encode -> decode, and the best
chi2/dof reachable through the decoder (Adam on the latents, from the encoder's output and from the
prior's centre), plus the median chi2/dof on a held-out mock (another seed). Then population
statistics measured on the fiber spectra: passive fraction (Halpha EW < 3 A), median Halpha EW,
Balmer decrement of star-forming disks face-on vs edge-on, merger fraction.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from galspec_batch.ingest.sdss import ingest_spectra
from galspec_batch.simulate import population, simulate_batch
from galspec_batch.spectra import WAVE, WAVE_EDGES
from galspec_batch.spectra_table import read_spectra_table, spectra_arrays
from galspec_batch.spectral_vae import chi2_per_dof, decode, encode, fit_vae

SDSS_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "sdss_spectra"
PASSIVE_EW = 3.0  # A, the usual SDSS split (e.g. Cid Fernandes et al. 2011)
FIT_STEPS, FIT_LR = 400, 0.03
BATCH = 500
DISK_MAX_BT = 0.5
FACE_ON_COS_I, EDGE_ON_COS_I = 0.7, 0.35
DECREMENT_MIN_EW = 10.0  # A: lines strong enough for a Balmer decrement
RED_FROM = 6000.0  # A, rest: the continuum the review found 10-20% off


def simulate(n: int, seed: int, size: int, start: int = 0):
    """Flux, ivar and truth of mock objects ``start .. start + n`` (simulated in batches)."""
    flux, ivar, truth = [], [], []
    for lo in range(start, start + n, BATCH):
        idx = np.arange(lo, min(lo + BATCH, start + n))
        b = simulate_batch(idx, np.zeros(len(idx)), np.zeros(len(idx)), seed=seed, image_shape=(size, size))
        flux.append(b.flux)
        ivar.append(b.ivar)
        truth.append(b.truth)
    columns = {k: np.concatenate([t[k] for t in truth]) for k in truth[0]}
    return np.concatenate(flux), np.concatenate(ivar), columns


def line_flux(flux: np.ndarray, centre: float, half: float = 10.0, side: float = 40.0):
    """Continuum-subtracted line flux (normalised units x A) and the local continuum level."""
    width = np.diff(WAVE_EDGES)
    line = np.abs(WAVE - centre) < half
    band = (np.abs(WAVE - centre) > half + 15) & (np.abs(WAVE - centre) < half + 15 + side)
    cont = np.median(flux[:, band], axis=1)
    return ((flux[:, line] - cont[:, None]) * width[line]).sum(axis=1), cont


def fit_latents(
    vae, flux: np.ndarray, ivar: np.ndarray, starts: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Best chi2/dof per spectrum over Adam fits of the latents through the decoder, and the model."""
    f = torch.from_numpy(flux.astype(np.float32))
    w = torch.from_numpy(ivar.astype(np.float32))
    mean = torch.from_numpy(vae.mean_spectrum)
    best = np.full(len(flux), np.inf)
    model = np.zeros_like(flux)
    for z0 in starts:
        z = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([z], lr=FIT_LR)
        for _ in range(FIT_STEPS):
            chi2 = (w * (f - vae.model.decode(z) - mean) ** 2).sum(dim=1)
            opt.zero_grad()
            chi2.sum().backward()
            opt.step()
        with torch.no_grad():
            m = (vae.model.decode(z) + mean).numpy()
        chi2 = chi2_per_dof(flux, ivar, m)
        better = chi2 < best
        best[better], model[better] = chi2[better], m[better]
    return best, model


def cos_inclination(truth: dict, seed: int, n: int) -> np.ndarray:
    """cos i of the disks: the truth column, or (code without it) from the disk axis ratio."""
    if "truth_cos_i" in truth:
        return truth["truth_cos_i"]
    q = population.draw_galaxies(seed, np.arange(n)).q_disk
    return np.sqrt(np.clip((q**2 - 0.15**2) / (1 - 0.15**2), 0, 1))


def population_stats(flux: np.ndarray, truth: dict, seed: int) -> None:
    ha, ha_cont = line_flux(flux, 6564.61)
    hb, _ = line_flux(flux, 4862.68)
    ew = ha / np.maximum(ha_cont, 1e-6)
    sfr = truth["truth_sfr"]
    print(f"passive fraction (measured fiber Halpha EW < {PASSIVE_EW:g} A): {np.mean(ew < PASSIVE_EW):.3f}")
    print(f"passive fraction (truth_sfr < {PASSIVE_EW:g} A):                {np.mean(sfr < PASSIVE_EW):.3f}")
    print(f"median Halpha EW: measured fiber {np.median(ew):.1f} A, truth_sfr {np.median(sfr):.1f} A")
    cos_i = cos_inclination(truth, seed, len(flux))
    sf_disk = (truth["truth_bulge_frac"] < DISK_MAX_BT) & ~truth["truth_agn"] & ~truth["truth_anomaly"] & (
        ew > DECREMENT_MIN_EW) & (hb > 0)
    dec = ha / np.where(hb > 0, hb, np.nan)
    face, edge = sf_disk & (cos_i > FACE_ON_COS_I), sf_disk & (cos_i < EDGE_ON_COS_I)
    print(f"Balmer decrement (Halpha/Hbeta, measured) of star-forming disks (B/T < {DISK_MAX_BT}, EW > "
          f"{DECREMENT_MIN_EW:g} A): face-on (cos i > {FACE_ON_COS_I}) {np.median(dec[face]):.2f} "
          f"(n={face.sum()}), edge-on (cos i < {EDGE_ON_COS_I}) {np.median(dec[edge]):.2f} (n={edge.sum()})")
    merger = truth.get("truth_merger", np.zeros(len(flux), bool))
    print(f"merger fraction: {np.mean(merger):.3f}; AGN fraction: {np.mean(truth['truth_agn']):.3f}")
    if "truth_sigma_v" in truth:
        lo, mid, hi = np.percentile(truth["truth_sigma_v"], [5, 50, 95])
        print(f"velocity dispersion: median {mid:.0f} km/s, 5-95% {lo:.0f}-{hi:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    flux, ivar, truth = simulate(args.n, args.seed, args.image_size)
    t_flux, t_ivar, _ = simulate(args.n_test, args.seed + 1, args.image_size)
    print(f"simulated {args.n} + {args.n_test} mock galaxies in {time.perf_counter() - t0:.1f} s")
    population_stats(flux, truth, args.seed)

    t0 = time.perf_counter()
    vae = fit_vae(flux, ivar)
    print(f"VAE trained in {time.perf_counter() - t0:.0f} s, best epoch {vae.meta['best_epoch']}, "
          f"mock validation median chi2/dof {vae.meta['val_chi2_dof_median']:.3f}")
    held_out = chi2_per_dof(t_flux, t_ivar, decode(vae, encode(vae, t_flux, t_ivar)))
    print(f"held-out mock (seed {args.seed + 1}, n={args.n_test}): median chi2/dof {np.median(held_out):.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        ingest_spectra([SDSS_DIR], Path(tmp) / "sdss.parquet", min_grid_coverage=0.4)
        table = read_spectra_table(Path(tmp) / "sdss.parquet")
    s_flux, s_ivar = spectra_arrays(table)
    z_enc = encode(vae, s_flux, s_ivar)
    recon = chi2_per_dof(s_flux, s_ivar, decode(vae, z_enc))
    best, model = fit_latents(vae, s_flux, s_ivar, [z_enc, np.zeros_like(z_enc)])
    red = (WAVE > RED_FROM)[None, :] & (s_ivar > 0)
    red_ratio = [np.median(f[ok] / m[ok]) for f, m, ok in zip(s_flux, model, red, strict=True)]
    print("\nreal SDSS spectrum          z       chi2/dof: encode->decode  best latent fit"
          f"  data/model > {RED_FROM:g} A (best fit)")
    for i in range(table.num_rows):
        plate, mjd, fiber = (table[c][i].as_py() for c in ("plate", "mjd", "fiber"))
        name = f"spec-{plate:04d}-{mjd}-{fiber:04d}"
        print(f"{name:26s} {table['z'][i].as_py():6.4f}   {recon[i]:10.2f}      {best[i]:10.2f}"
              f"       {red_ratio[i]:6.3f}")
    print(f"{'median':26s} {'':6s}   {np.median(recon):10.2f}      {np.median(best):10.2f}")


if __name__ == "__main__":
    main()
