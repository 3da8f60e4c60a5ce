"""Figures: plain functions that take arrays and return a matplotlib Figure (saved if asked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from galspec_batch.columns import (
    D4000_BLUE,
    D4000_RED,
    DEC,
    LINES,
    OBJECT_ID,
    RA,
    Z_PHOT,
    count_latents,
    latent_names,
    std_column,
)
from galspec_batch.errors import InputError


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
        for wl, name in _line_marks():
            ax_sp.axvline(wl, color="tab:blue", lw=0.4, alpha=0.5)
            if k == 0:
                ax_sp.text(wl, 1.0, name, transform=ax_sp.get_xaxis_transform(), fontsize=7,
                           ha="center", va="bottom", color="tab:blue")
        if titles is not None:
            ax_sp.text(0.01, 0.95, titles[k], transform=ax_sp.transAxes, fontsize=8, va="top")
        ax_sp.set_ylabel("flux (norm.)")
    axes[-1, 1].set_xlabel("rest-frame wavelength (A)")
    fig.tight_layout()
    return _figure_out(fig, path)


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
    ids = sub[OBJECT_ID].to_numpy()
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


def _figure_out(fig, path):
    """Save ``fig`` atomically when given a path (PNG/PDF by the suffix); return it."""
    if path is not None:
        from galspec_batch.atomic import atomic_path

        with atomic_path(path, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    return fig


def _pyplot(path):
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(true: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: np.ndarray | None = None,
                     nu: np.ndarray | None = None, names: Sequence[str] | None = None,
                     path: str | Path | None = None):
    """Reliability curves: the observed fraction of true values inside the central interval of each
    probability, against that probability, one line per target; the network's own ``std`` as a
    Gaussian, and (a second panel) calibrated by ``scale`` with t shapes ``nu``."""
    from galspec_batch.uncertainty import NU_MAX, central_factor, gaussian_coverage, standardized

    plt = _pyplot(path)
    r = standardized(true, mean, std)
    n_t = r.shape[1]
    names = list(names) if names is not None else latent_names(n_t)
    qs = np.linspace(0.0, 0.999, 200)
    panels = [("the network's own spread, as a Gaussian", r, np.full(n_t, NU_MAX))]
    if scale is not None:
        nus = np.full(n_t, NU_MAX) if nu is None else np.asarray(nu, np.float64)
        panels.append(("calibrated (scale, Student-t shape)", r / np.asarray(scale, np.float64), nus))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    colors = plt.get_cmap("tab10")
    one = float(gaussian_coverage(1.0))
    for ax, (title, z, nus) in zip(axes[0], panels, strict=True):
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="perfect calibration")
        for i in range(n_t):
            zi = np.abs(z[np.isfinite(z[:, i]), i])
            observed = [np.mean(zi <= central_factor(nus[i], q)) for q in qs]
            ax.plot(qs, observed, color=colors(i % 10), lw=1.5,
                    label=f"{names[i]}: {np.mean(zi <= 1):.0%} within 1$\\sigma$")
        for q in (one, float(gaussian_coverage(2.0))):
            ax.axvline(q, color="0.8", lw=0.8, zorder=0)
            ax.axhline(q, color="0.8", lw=0.8, zorder=0)
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", title=f"{title}\n({len(r)} objects)",
               xlabel="probability of the central predictive interval",
               ylabel="observed fraction of true values inside it")
        ax.text(0.98, 0.03, "above the diagonal: too wide\nbelow: too narrow", fontsize=7,
                ha="right", va="bottom", transform=ax.transAxes, color="0.4")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _figure_out(fig, path)


def _latent_arrays(data) -> tuple[np.ndarray, list[str]]:
    """[N, L] latent means and their names from a catalog path, table, DataFrame or array."""
    if isinstance(data, np.ndarray):
        return data.astype(np.float64), latent_names(data.shape[1])

    if isinstance(data, (str, Path)):
        from galspec_batch.catalog import read_catalog

        data = read_catalog(data)
    cols = list(data.columns) if hasattr(data, "iloc") else data.column_names
    names = latent_names(count_latents(cols, "table"))
    return np.stack([np.asarray(data[c], np.float64) for c in names], axis=1), names


def plot_latent_corner(data, observed: np.ndarray | None = None, bins: int = 40,
                       path: str | Path | None = None):
    """Corner plot of the predicted latents (2-D histograms below the diagonal, 1-D on it) of a
    catalog (path, Arrow table, DataFrame) or an [N, L] array; ``observed`` [M, L] is overlaid in red."""
    from matplotlib.colors import LogNorm

    plt = _pyplot(path)
    x, names = _latent_arrays(data)
    n_lat = x.shape[1]
    both = x if observed is None else np.concatenate([x, np.asarray(observed, np.float64)])
    lo, hi = np.nanpercentile(both, 0.5, axis=0), np.nanpercentile(both, 99.5, axis=0)
    fig, axes = plt.subplots(n_lat, n_lat, figsize=(1.9 * n_lat + 1, 1.9 * n_lat + 0.5), squeeze=False)
    for r in range(n_lat):
        for c in range(n_lat):
            ax = axes[r, c]
            if c > r:
                fig.delaxes(ax)
                continue
            if r == c:
                edges = np.linspace(lo[c], hi[c], bins + 1)
                ax.hist(x[:, c], edges, histtype="stepfilled", color="0.6", density=True, label="predicted")
                if observed is not None:
                    ax.hist(observed[:, c], edges, histtype="step", color="tab:red", lw=1.2, density=True,
                            label="observed")
                ax.set_yticks([])
            else:
                ax.hist2d(x[:, c], x[:, r], bins=bins, range=[[lo[c], hi[c]], [lo[r], hi[r]]], cmap="Greys",
                          norm=LogNorm(), cmin=1)
                if observed is not None:
                    h, xe, ye = np.histogram2d(observed[:, c], observed[:, r], bins=bins // 2,
                                               range=[[lo[c], hi[c]], [lo[r], hi[r]]])
                    if h.max() > 0:
                        ax.contour((xe[1:] + xe[:-1]) / 2, (ye[1:] + ye[:-1]) / 2, h.T, colors="tab:red",
                                   linewidths=0.7, levels=np.quantile(h[h > 0], [0.5, 0.9]))
                ax.set_ylim(lo[r], hi[r])
            ax.set_xlim(lo[c], hi[c])
            ax.tick_params(labelsize=6)
            if r == n_lat - 1:
                ax.set_xlabel(names[c], fontsize=8)
            else:
                ax.set_xticklabels([])
            if c == 0 and r > 0:
                ax.set_ylabel(names[r], fontsize=8)
            elif r != c:
                ax.set_yticklabels([])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=9, bbox_to_anchor=(0.88, 0.86))
    fig.suptitle(f"predicted latents of {len(x)} objects (VAE units; log-scaled 2-D counts)"
                 + (f", observed latents of {len(observed)} in red" if observed is not None else ""),
                 fontsize=10, y=0.96)
    fig.subplots_adjust(wspace=0.08, hspace=0.08, top=0.93)
    return _figure_out(fig, path)


def _unwrap_ra(ra: np.ndarray, ref: float) -> np.ndarray:
    """RA moved by whole turns into [ref - 180, ref + 180): a field across RA = 0 stays in one piece."""
    return (np.asarray(ra, np.float64) - ref + 180.0) % 360.0 - 180.0 + ref


def plot_sky_map(catalog, column: str | None = None, partition_order: int | None = None,
                 gridsize: int | None = None,
                 path: str | Path | None = None):
    """RA/Dec map of a catalog (path, Arrow table or DataFrame): object counts per cell, or the mean of
    ``column`` per cell; RA increases to the left. The catalog's partitions are drawn (those of a
    path's HATS catalog, of mixed orders, or those at ``partition_order`` of a table)."""
    import cdshealpix.nested
    import pandas as pd

    from galspec_batch.sky import healpix_29, pixel_at_order

    plt = _pyplot(path)
    parts: list[tuple[int, int]] = []
    if isinstance(catalog, (str, Path)):
        from galspec_batch.catalog import read_catalog
        from galspec_batch.catalog.reader import catalog_pixels

        parts = catalog_pixels(catalog) if partition_order is None else []
        catalog = read_catalog(catalog)
    df = catalog if isinstance(catalog, pd.DataFrame) else catalog.to_pandas()
    if column is not None and column not in df.columns:
        from galspec_batch.errors import did_you_mean

        raise InputError(f"catalog has no column {column!r}." + did_you_mean(column, list(df.columns)))
    ra_raw, dec = df[RA].to_numpy(np.float64), df[DEC].to_numpy(np.float64)
    ref = float(np.degrees(np.arctan2(np.sin(np.radians(ra_raw)).mean(), np.cos(np.radians(ra_raw)).mean())))
    ra = _unwrap_ra(ra_raw, ref)
    gridsize = gridsize or int(np.clip(np.sqrt(len(df)) / 2, 10, 150))
    fig, ax = plt.subplots(figsize=(7.5, 6))
    if column is None:
        hb = ax.hexbin(ra, dec, gridsize=gridsize, mincnt=1, cmap="viridis")
        label = "objects per cell"
    else:
        hb = ax.hexbin(ra, dec, C=df[column].to_numpy(np.float64), reduce_C_function=np.mean,
                       gridsize=gridsize, mincnt=1, cmap="viridis")
        label = f"mean {column} per cell"
    fig.colorbar(hb, ax=ax, label=label, shrink=0.8)
    if partition_order is not None and len(df):
        hp = df["_healpix_29"].to_numpy() if "_healpix_29" in df.columns else healpix_29(ra_raw, dec)
        parts = [(partition_order, int(p)) for p in np.unique(pixel_at_order(hp, partition_order))]
    orders = sorted({o for o, _ in parts})
    for k, (o, p) in enumerate(parts):  # a big pixel's edges curve: more vertices along them
        lon, lat = cdshealpix.nested.vertices(np.array([p], np.uint64), o, step=max(1, 2 ** (6 - o)))
        ax.fill(_unwrap_ra(lon.to_value("deg")[0], ref), lat.to_value("deg")[0], fill=False, ec="tab:orange",
                lw=0.8, label=f"partitions (HEALPix orders {orders})" if k == 0 else None)
    if parts:
        ax.legend(loc="upper right", fontsize=8)
    if len(df):  # the objects fill the frame; a partition larger than the field is cut at its edge
        pad = max(0.05 * max(np.ptp(ra), np.ptp(dec)), 0.05)
        ax.set_xlim(ra.min() - pad, ra.max() + pad)
        ax.set_ylim(dec.min() - pad, dec.max() + pad)
    ax.set_aspect(1 / max(np.cos(np.radians(np.median(dec))), 0.05))
    ax.invert_xaxis()
    ax.set(xlabel="RA (deg)", ylabel="Dec (deg)",
           title=f"{len(df)} catalog objects" + (f", coloured by {column}" if column else ""))
    fig.tight_layout()
    return _figure_out(fig, path)


def plot_figure1(images: np.ndarray, wave: np.ndarray, true_flux: np.ndarray, pred_median: np.ndarray,
                 pred_lo: np.ndarray, pred_hi: np.ndarray, true_ivar: np.ndarray | None = None,
                 titles: Sequence[str] | None = None,
                 bands: Sequence[str] = ("g", "r", "i", "z", "y"), pixel_scale: float = 0.25,
                 path: str | Path | None = None):
    """Figure-1-style panels (Wu & Peek 2020): per galaxy, its grizy composite next to the true
    spectrum and the predicted median with its 16-84% band; ``images`` [N, B, H, W], spectra [N, L]
    on rest-frame ``wave`` (A); pixels where ``true_ivar`` is 0 (not observed) are left blank."""
    plt = _pyplot(path)
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(11, 2.4 * n + 0.4), gridspec_kw={"width_ratios": [1, 3.6]},
                             squeeze=False)
    for k in range(n):
        ax_im, ax_sp = axes[k]
        h, w = images[k].shape[-2:]
        half_w, half_h = w / 2 * pixel_scale, h / 2 * pixel_scale
        ax_im.imshow(grizy_rgb(images[k], bands), origin="lower", extent=[-half_w, half_w, -half_h, half_h],
                     interpolation="nearest")
        ax_im.set_xlabel("arcsec", fontsize=7)
        ax_im.tick_params(labelsize=6)
        ax_sp.fill_between(wave, pred_lo[k], pred_hi[k], color="tab:red", alpha=0.25, lw=0, step="mid",
                           label="predicted 16-84%")
        true_k = np.asarray(true_flux[k], np.float64)
        if true_ivar is not None:
            true_k = np.where(np.asarray(true_ivar[k]) > 0, true_k, np.nan)
        ax_sp.plot(wave, true_k, color="k", lw=0.6, drawstyle="steps-mid", label="true spectrum")
        ax_sp.plot(wave, pred_median[k], color="tab:red", lw=0.9, label="predicted median")
        shown = np.concatenate([true_k, np.asarray(pred_hi[k], np.float64)])
        shown = shown[np.isfinite(shown)]
        top = np.percentile(shown, 99.8) if shown.size else 1.0
        ax_sp.set_ylim(min(0.0, np.percentile(shown, 0.5)) if shown.size else 0.0, 1.1 * top)
        ax_sp.set_xlim(wave[0], wave[-1])
        for wl, name in _line_marks():
            ax_sp.axvline(wl, color="tab:blue", lw=0.5, alpha=0.5, ls=":")
            if k == 0:
                ax_sp.text(wl, 1.0, name, transform=ax_sp.get_xaxis_transform(), fontsize=7, ha="center",
                           va="bottom", color="tab:blue")
        if titles is not None:
            ax_sp.text(0.01, 0.95, titles[k], transform=ax_sp.transAxes, fontsize=8, va="top")
        ax_sp.set_ylabel("flux (normalised)", fontsize=8)
        if k == 0:
            ax_sp.legend(fontsize=7, loc="upper right", ncol=3)
            ax_im.set_title(f"{''.join(bands)} composite", fontsize=8)
    axes[-1, 1].set_xlabel("rest-frame wavelength (A)")
    fig.tight_layout()
    return _figure_out(fig, path)


def plot_vae_reconstructions(flux: np.ndarray, ivar: np.ndarray, decoded: np.ndarray, wave: np.ndarray, *,
                             titles: Sequence[str] | None = None, path: str | Path | None = None):
    """Observed spectra (black, grey 1-sigma band, masked pixels blank) against their VAE
    reconstructions (red), one per row, with the emission lines marked."""
    plt = _pyplot(path)
    n = len(flux)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.2 * n), sharex=True, squeeze=False)
    for k, ax in enumerate(axes[:, 0]):
        ok = ivar[k] > 0
        shown = np.where(ok, flux[k], np.nan)
        sigma = np.where(ok, 1 / np.sqrt(np.where(ok, ivar[k], 1)), np.nan)
        ax.fill_between(wave, shown - sigma, shown + sigma, color="0.8", lw=0, step="mid")
        ax.plot(wave, shown, color="k", lw=0.5, drawstyle="steps-mid", label="observed")
        ax.plot(wave, decoded[k], color="tab:red", lw=0.8, label="VAE decoded")
        lo = min(np.nanpercentile(shown, 0.5), decoded[k].min()) if ok.any() else decoded[k].min()
        ax.set_ylim(min(0.0, lo), 1.08 * max(np.nanmax(shown) if ok.any() else 0, decoded[k].max()))
        for wl, name in _line_marks():
            ax.axvline(wl, color="tab:blue", lw=0.4, alpha=0.5)
            if k == 0:
                ax.text(wl, 1.0, name, transform=ax.get_xaxis_transform(), fontsize=7, ha="center",
                        va="bottom", color="tab:blue")
        if titles is not None:
            ax.text(0.01, 0.95, titles[k], transform=ax.transAxes, fontsize=8, va="top")
        ax.set_ylabel("flux (norm.)")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlim(wave[0], wave[-1])
    axes[-1, 0].set_xlabel("rest-frame wavelength (A)")
    fig.tight_layout()
    return _figure_out(fig, path)


def _line_labels(lines: dict[str, tuple[float, tuple[float, float]]], gap: float) -> list[tuple[float, str]]:
    """One label per group of lines closer than ``gap`` A (e.g. 'Ha+[NII]'), at the group's mean."""
    groups: list[list[tuple[float, str]]] = []
    for label, (center, _) in sorted(lines.items(), key=lambda kv: kv[1][0]):
        if groups and center - groups[-1][-1][0] < gap:
            groups[-1].append((center, label))
        else:
            groups.append([(center, label)])
    return [(float(np.mean([c for c, _ in g])), "+".join(lab for _, lab in g)) for g in groups]


def _line_marks() -> list[tuple[float, str]]:
    """Where to mark the emission lines of ``LINES`` on a full-range spectrum (close ones merged)."""
    return _line_labels({w.label: (w.center, w.line) for w in LINES}, 40.0)


def plot_decoded_spectra(wave: np.ndarray, median: np.ndarray, lo: np.ndarray, hi: np.ndarray, *,
                         lines: dict[str, tuple[float, tuple[float, float]]] | None = None,
                         shaded: dict[str, tuple[float, float]] | None = None,
                         zoom: tuple[float, float] | None = (6470.0, 6660.0),
                         titles: Sequence[str] | None = None, redshift: np.ndarray | None = None,
                         path: str | Path | None = None):
    """Decoded spectra (median [N, L] with the 16-84% band ``lo``..``hi``) on rest-frame ``wave``
    (A), one per row, with a zoom on ``zoom`` (default Halpha + [NII]) beside each; ``lines`` maps
    a label to (centre, line window), both shaded, and ``shaded`` a label to a band (e.g. D4000).
    With ``redshift`` [N] each row is drawn in its observed frame (wavelengths times 1 + z)."""
    plt = _pyplot(path)
    n = len(median)
    ncol = 2 if zoom is not None else 1
    share = "col" if redshift is None else False
    fig, axes = plt.subplots(n, ncol, figsize=(12, 2.2 * n + 0.3), sharex=share, squeeze=False,
                             gridspec_kw={"width_ratios": [3.2, 1][:ncol]})
    rest_wave, rest_lines, rest_shaded, rest_zoom = wave, lines or {}, shaded or {}, zoom
    for k in range(n):
        f = 1.0 if redshift is None else 1.0 + float(redshift[k])
        wave = rest_wave * f
        lines = {t: (c * f, (a * f, b * f)) for t, (c, (a, b)) in rest_lines.items()}
        shaded = {t: (a * f, b * f) for t, (a, b) in rest_shaded.items()}
        zoom = None if rest_zoom is None else (rest_zoom[0] * f, rest_zoom[1] * f)
        for c, ax in enumerate(axes[k]):
            ax.fill_between(wave, lo[k], hi[k], color="tab:red", alpha=0.3, lw=0, label="16-84% of MC draws")
            ax.plot(wave, median[k], color="tab:red", lw=0.8, label="median decoded spectrum")
            for label, (a, b) in (shaded or {}).items():
                ax.axvspan(a, b, color="0.85", lw=0, zorder=0)
                if k == 0 and c == 0:
                    ax.text((a + b) / 2, 0.03, label, transform=ax.get_xaxis_transform(), fontsize=6,
                            ha="center", va="bottom", color="0.3", rotation=90)
            for center, (a, b) in lines.values():
                ax.axvspan(a, b, color="tab:blue", alpha=0.15, lw=0, zorder=0)
                ax.axvline(center, color="tab:blue", lw=0.4, alpha=0.6)
            if k == 0 or redshift is not None:
                for center, label in _line_labels(lines, 40.0 if c == 0 else 5.0):
                    if c == 1 and not zoom[0] <= center <= zoom[1]:
                        continue
                    ax.text(center, 1.0, label, transform=ax.get_xaxis_transform(), fontsize=7,
                            ha="center", va="bottom", color="tab:blue")
            inside = (wave >= zoom[0]) & (wave <= zoom[1]) if c == 1 else np.ones(len(wave), bool)
            shown = np.concatenate([lo[k][inside], hi[k][inside]])
            shown = shown[np.isfinite(shown)]
            if shown.size:
                ax.set_ylim(min(0.0, shown.min()), 1.1 * shown.max())
        if titles is not None:
            axes[k, 0].text(0.01, 0.95, titles[k], transform=axes[k, 0].transAxes, fontsize=8, va="top")
        axes[k, 0].set_ylabel("flux (norm.)")
        axes[k, 0].set_xlim(wave[0], wave[-1])
        if zoom is not None:
            axes[k, 1].set_xlim(*zoom)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    frame = "rest-frame" if redshift is None else "observed (at z_phot)"
    for ax in axes[-1]:
        ax.set_xlabel(f"{frame} wavelength (A)")
    fig.tight_layout()
    return _figure_out(fig, path)


def plot_decoded_file(spectra: str | Path, path: str | Path | None = None, n: int = 5,
                      observed_frame: bool = False):
    """Plot the first ``n`` spectra of a ``galspec decode`` output, with their EW(Halpha), EW([OII])
    and D4000 (MC median +- std) in the titles and the measurement windows shaded; in the observed
    frame at each object's z_phot with ``observed_frame``."""
    from galspec_batch.decode import read_decoded

    wave, sp, table = read_decoded(spectra, n)
    t = table.to_pydict()
    redshift = None
    if observed_frame:
        if Z_PHOT not in t:
            raise InputError(f"decoded spectra {spectra} have no {Z_PHOT} (the catalog's model predicts "
                             "no redshift), so they cannot be drawn in the observed frame")
        redshift = np.asarray(t[Z_PHOT], np.float64)

    def _pm(name: str, k: int, fmt: str) -> str:
        v, s = t[name][k], t[std_column(name)][k]
        return "n/a" if v is None else f"{v:{fmt}}" + ("" if s is None else f" +- {s:{fmt}}")

    titles = [f"id {t['object_id'][k]}  EW(Ha) {_pm('ew_halpha', k, '.1f')} A  "
              f"EW([OII]) {_pm('ew_oii', k, '.1f')} A  D4000 {_pm('d4000', k, '.3f')}"
              for k in range(table.num_rows)]
    lines = {w.label: (w.center, w.line) for w in LINES}
    shaded = {"D4000 blue": D4000_BLUE, "D4000 red": D4000_RED}
    if redshift is not None:
        titles = [f"{title}  z_phot {_pm(Z_PHOT, k, '.3f')}" for k, title in enumerate(titles)]
    return plot_decoded_spectra(wave, sp["median"], sp["lo"], sp["hi"], lines=lines, shaded=shaded,
                                titles=titles, redshift=redshift, path=path)
