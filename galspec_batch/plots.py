"""Figures: plain functions that take arrays and return a matplotlib Figure (saved if asked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

EMISSION_LINES = {"[OII]": 3728.5, "Hb": 4862.7, "[OIII]": 5008.2, "Ha+[NII]": 6564.6}


def grizy_rgb(image: np.ndarray, bands: Sequence[str] = ("g", "r", "i", "z", "y"),
              rgb: tuple[str, str, str] = ("i", "r", "g"),
              scales: tuple[float, float, float] = (1.0, 1.3, 2.0),
              stretch: float = 0.5, q: float = 8.0) -> np.ndarray:
    """An asinh-stretched (Lupton et al. 2004) colour composite [H, W, 3] of one [B, H, W] cutout;
    ``scales`` weight the channels so that a flat-f_nu source looks bluish-white, as in survey viewers."""
    planes = np.stack([s * np.nan_to_num(image[list(bands).index(b)].astype(np.float64), nan=0.0)
                       for b, s in zip(rgb, scales, strict=True)])
    total = np.maximum(planes.mean(axis=0), 1e-12)
    scale = np.arcsinh(q * total / stretch) / (q * total)
    out = np.clip(planes * scale, 0, None).transpose(1, 2, 0)
    return np.clip(out / max(float(np.percentile(out, 99.7)), 1e-12), 0, 1)


def plot_mock_galaxies(
    images: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    wave: np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    pixel_scale: float = 0.25,
    bands: Sequence[str] = ("g", "r", "i", "z", "y"),
    path: str | Path | None = None,
):
    """A grizy composite (i, r, g as RGB) next to the rest-frame spectrum, one galaxy per row.

    ``images`` [N, B, H, W]; ``flux``/``ivar`` [N, L] on rest-frame wavelengths ``wave`` (A).
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(11, 2.3 * n), gridspec_kw={"width_ratios": [1, 3.6]},
                             squeeze=False)
    for k in range(n):
        ax_im, ax_sp = axes[k]
        h, w = images[k].shape[-2:]
        extent = [-w / 2 * pixel_scale, w / 2 * pixel_scale, -h / 2 * pixel_scale, h / 2 * pixel_scale]
        ax_im.imshow(grizy_rgb(images[k], bands), origin="lower", extent=extent, interpolation="nearest")
        ax_im.add_patch(plt.Circle((0, 0), 1.5, fill=False, color="w", lw=0.6, ls="--"))
        ax_im.set_xticks([])
        ax_im.set_yticks([])
        ok = ivar[k] > 0
        shown = np.where(ok, flux[k], np.nan)
        sigma = np.where(ok, 1 / np.sqrt(np.where(ok, ivar[k], 1)), np.nan)
        ax_sp.fill_between(wave, shown - sigma, shown + sigma, color="0.8", lw=0, step="mid")
        ax_sp.plot(wave, shown, color="k", lw=0.6, drawstyle="steps-mid")
        top = np.nanmax(shown) if ok.any() else 1.0
        ax_sp.set_ylim(min(0.0, np.nanpercentile(shown, 0.5)) if ok.any() else 0.0, 1.08 * top)
        ax_sp.set_xlim(wave[0], wave[-1])
        for name, wl in EMISSION_LINES.items():
            ax_sp.axvline(wl, color="tab:blue", lw=0.4, alpha=0.5)
            if k == 0:
                ax_sp.text(wl, 1.0, name, transform=ax_sp.get_xaxis_transform(), fontsize=7,
                           ha="center", va="bottom", color="tab:blue")
        if titles is not None:
            ax_sp.text(0.01, 0.95, titles[k], transform=ax_sp.transAxes, fontsize=8, va="top")
        ax_sp.set_ylabel("flux (norm.)")
    axes[-1, 1].set_xlabel("rest-frame wavelength (A)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_mock_survey(store: str | Path, spectra: str | Path, path: str | Path | None = None, n: int = 6):
    """Plot ``n`` galaxies of a mock survey, chosen to span the bulge fraction from disks to
    ellipticals (among the first 2000 objects), with their truth in the titles."""
    from galspec_batch.spectra import WAVE
    from galspec_batch.spectra_table import read_spectra_table, spectra_arrays
    from galspec_batch.store import open_store

    st = open_store(store)
    table = read_spectra_table(spectra)
    rows_sp = np.arange(min(len(table), 2000))
    bt = table["truth_bulge_frac"].to_numpy()[rows_sp]
    spread = np.linspace(0, len(rows_sp) - 1, min(n, len(rows_sp))).astype(int)
    picks = rows_sp[np.argsort(bt, kind="stable")][spread]
    sub = table.take(picks)
    flux, ivar = spectra_arrays(sub)
    ids = sub["object_id"].to_numpy()
    row_of = {int(i): k for k, i in enumerate(st.object_id)}
    batch = st.read(np.array([row_of[int(i)] for i in ids]))
    t = {c: sub[c].to_numpy() for c in sub.column_names if c.startswith("truth_")}
    titles = [
        f"id {ids[k]}  z={t['truth_z'][k]:.3f}  r={t['truth_r_mag'][k]:.2f}  "
        f"B/T={t['truth_bulge_frac'][k]:.2f}  "
        f"EW(Ha)={t['truth_sfr'][k]:.0f} A" + ("  AGN" if t["truth_agn"][k] else "")
        + ("  ANOMALY" if t["truth_anomaly"][k] else "")
        for k in range(len(ids))
    ]
    return plot_mock_galaxies(batch.images, flux, ivar, WAVE, titles=titles, pixel_scale=st.pixel_scale,
                              bands=st.bands, path=path)
