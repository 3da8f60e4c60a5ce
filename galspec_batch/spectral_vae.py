"""Train, save, load and apply the spectrum VAE (Portillo et al. 2020) whose latents label the CNN.

Spectra are on the rest-frame grid of :mod:`galspec_batch.spectra`, normalised to unit mean over
valid pixels; ``ivar == 0`` marks a masked pixel. The VAE models ``flux - mean_spectrum``, the
mean spectrum being stored with the weights.

Pixel weights are ``ivar / (1 + ivar * floor**2)``, i.e. ``1 / (sigma**2 + floor**2)``: Portillo's
``1 / (err**2 + c)`` with ``c = floor**2`` in the unit-mean normalisation (default floor 0.01, 1% of
the mean flux), so no very-high-S/N pixel dominates; masked pixels get weight 0. Training needs no
iterative-PCA infilling because masked pixels carry no weight; the encoder sees masked pixels
filled with the mean spectrum (a residual of 0), at training and at encoding time alike.

On disk a VAE is a directory: ``vae.safetensors`` (weights and ``mean_spectrum``), ``vae.json``
(architecture, training settings, data hash, code version) and ``metrics.csv`` (one row per epoch).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from galspec_batch import __version__
from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path, file_sha256, refuse_existing
from galspec_batch.columns import OBJECT_ID, REDSHIFT, SPECTRUM_TYPE, latent_names
from galspec_batch.errors import FormatError, InputError, MissingFileError, UsageError
from galspec_batch.formats import VersionedFormat, check_int, require
from galspec_batch.labels import read_labels
from galspec_batch.models.vae import SpectrumVAE, VAEArch, infovae_loss
from galspec_batch.progress import Progress
from galspec_batch.spectra_table import FLUX, read_spectra_table, spectra_arrays

WEIGHTS_FILE = "vae.safetensors"
CONFIG_FILE = "vae.json"
METRICS_FILE = "metrics.csv"
MEAN_KEY = "mean_spectrum"
VAE_METADATA_KEY = b"galspec.vae"
METRIC_COLUMNS = ("epoch", "train_loss", "train_recon", "train_kl", "train_mmd", "val_loss", "val_chi2_dof")


@dataclass(frozen=True)
class VAESettings:
    """How a VAE is trained (stored in ``vae.json``). alpha/lam as in InfoVAE (Zhao et al.)."""

    epochs: int = D.VAE_EPOCHS
    batch_size: int = 64
    lr: float = 1e-3
    alpha: float = 0.0
    lam: float = 1000.0
    weight_floor: float = 0.01
    val_fraction: float = 0.1
    patience: int = 10
    seed: int = D.SEED


@dataclass(frozen=True)
class VAEConfig(VersionedFormat):
    """``vae.json``: the architecture, how it was trained, and its record (data hash, metrics)."""

    FORMAT: ClassVar[str] = "galspec-spectrum-vae"
    VERSION: ClassVar[int] = 1

    arch: VAEArch
    training: VAESettings
    meta: dict = field(default_factory=dict)

    def validate(self) -> None:
        a = self.arch
        check_int("arch.n_pix", a.n_pix, 1, 100_000)
        check_int("arch.n_latent", a.n_latent, 1, 256)
        for h in a.hidden:
            check_int("arch.hidden", h, 1, 100_000)
        require(isinstance(self.meta, dict), "meta must be an object")

    @classmethod
    def _decode(cls, body: dict) -> dict:
        return {**body, "arch": VAEArch.from_dict(body["arch"]), "training": VAESettings(**body["training"])}


@dataclass
class TrainedVAE:
    """A VAE with its mean spectrum, the settings it was trained with, and its provenance."""

    model: SpectrumVAE
    mean_spectrum: np.ndarray
    settings: VAESettings
    meta: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @property
    def n_latent(self) -> int:
        return self.model.arch.n_latent


def pixel_weights(ivar: np.ndarray, floor: float) -> np.ndarray:
    """``1 / (sigma**2 + floor**2)`` written so that ``ivar == 0`` gives weight 0."""
    ivar = np.asarray(ivar, dtype=np.float64)
    return (ivar / (1.0 + ivar * floor**2)).astype(np.float32)


def validate_spectra(flux, ivar, n_pix: int = 1000, object_id=None) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values; return float32 (flux with masked pixels set to 0, ivar)."""
    flux = np.asarray(flux, dtype=np.float32)
    ivar = np.asarray(ivar, dtype=np.float32)
    if flux.ndim != 2 or flux.shape[1] != n_pix:
        raise InputError(
            f"flux has shape {flux.shape}; expected (n_spectra, {n_pix}) on the galspec_batch.spectra grid"
        )
    if ivar.shape != flux.shape:
        raise InputError(f"ivar has shape {ivar.shape}; expected the shape of flux {flux.shape}")

    def _where(bad_rows: np.ndarray) -> str:
        i = int(np.flatnonzero(bad_rows)[0])
        who = f"object_id {int(object_id[i])}" if object_id is not None else f"row {i}"
        return f"{int(bad_rows.sum())} spectra, first {who}"

    bad_ivar = ~np.isfinite(ivar) | (ivar < 0)
    if bad_ivar.any():
        raise InputError(f"ivar must be finite and >= 0: bad values in {_where(bad_ivar.any(axis=1))}")
    valid = ivar > 0
    bad_flux = valid & ~np.isfinite(flux)
    if bad_flux.any():
        raise InputError(
            f"flux is NaN or infinite where ivar > 0 in {_where(bad_flux.any(axis=1))} "
            "(set ivar = 0 on masked pixels)"
        )
    empty = ~valid.any(axis=1)
    if empty.any():
        raise InputError(f"spectra with no valid pixel (ivar == 0 everywhere): {_where(empty)}")
    return np.where(valid, flux, 0.0).astype(np.float32), ivar


def mean_spectrum(flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """Mean over the spectra valid at each pixel; pixels valid nowhere are interpolated."""
    valid = ivar > 0
    n = valid.sum(axis=0)
    mean = np.where(valid, flux, 0.0).sum(axis=0, dtype=np.float64) / np.maximum(n, 1)
    pix = np.arange(flux.shape[1])
    mean = np.interp(pix, pix[n > 0], mean[n > 0])
    return mean.astype(np.float32)


def data_hash(flux: np.ndarray, ivar: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(flux, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(ivar, dtype=np.float32).tobytes())
    return h.hexdigest()


def _inputs(vae_mean: np.ndarray, flux: np.ndarray, ivar: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(ivar > 0, flux - vae_mean, 0.0).astype(np.float32))


def chi2_per_dof(flux: np.ndarray, ivar: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Per spectrum: sum ivar * (flux - model)^2 over valid pixels / number of valid pixels."""
    valid = ivar > 0
    r2 = np.where(valid, ivar * (np.where(valid, flux, 0.0) - model) ** 2, 0.0)
    return (r2.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)).astype(np.float64)


def _n_validation(n: int, settings: VAESettings) -> int:
    return max(1, int(round(settings.val_fraction * n)))


def min_vae_spectra(settings: VAESettings = VAESettings()) -> int:
    """The fewest spectra :func:`fit_vae` trains on: 8, and a quarter batch left once the
    validation split is taken."""
    if not 0 <= settings.val_fraction < 1:
        raise UsageError(f"the VAE's val_fraction must be in [0, 1), got {settings.val_fraction}")
    n = 8
    while n - _n_validation(n, settings) < settings.batch_size // 4:
        n += 1
    return n


def fit_vae(
    flux,
    ivar,
    *,
    n_latent: int = D.N_LATENTS,
    settings: VAESettings = VAESettings(),
    progress: bool = False,
) -> TrainedVAE:
    """Train a VAE on spectra [N, 1000]; early stopping on a seeded validation split."""
    flux, ivar = validate_spectra(flux, ivar)
    n = len(flux)
    n_val, least = _n_validation(n, settings), min_vae_spectra(settings)
    if n < least:
        raise InputError(f"{n} spectra are too few to train a VAE (need at least {least})")
    if n_latent < 1:
        raise UsageError(f"--latents must be >= 1, got {n_latent}")

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    perm = np.random.default_rng(settings.seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    mean = mean_spectrum(flux[train_idx], ivar[train_idx])
    x = _inputs(mean, flux, ivar)
    w = torch.from_numpy(pixel_weights(ivar, settings.weight_floor))
    xt, wt, xv, wv = x[train_idx], w[train_idx], x[val_idx], w[val_idx]

    model = SpectrumVAE(VAEArch(n_pix=flux.shape[1], n_latent=n_latent))
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    vae = TrainedVAE(model=model, mean_spectrum=mean, settings=settings)
    best = (float("inf"), copy.deepcopy(model.state_dict()), 0)
    history: list[dict] = []

    with Progress(progress) as bar:
        advance = bar.task("training VAE", settings.epochs, "epochs")
        for epoch in range(1, settings.epochs + 1):
            model.train()
            sums = np.zeros(4)
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), settings.batch_size):
                b = order[start : start + settings.batch_size]
                x_hat, z, mu, logvar = model(xt[b], generator=gen)
                prior = torch.randn(z.shape, generator=gen)
                loss = infovae_loss(xt[b], wt[b], x_hat, z, mu, logvar, prior, settings.alpha, settings.lam)
                opt.zero_grad()
                loss.total.backward()
                opt.step()
                parts = (loss.total, loss.recon, loss.kl, loss.mmd)
                sums += len(b) * np.array([float(t.detach()) for t in parts])
            val_loss = _validation_loss(model, xv, wv, settings)
            fv, iv = flux[val_idx], ivar[val_idx]
            val_chi2 = float(np.median(chi2_per_dof(fv, iv, decode(vae, encode(vae, fv, iv)))))
            values = [epoch, *(float(v) for v in sums / len(xt)), val_loss, val_chi2]
            row = dict(zip(METRIC_COLUMNS, values, strict=True))
            history.append(row)
            advance(1)
            bar.log(f"epoch {epoch}: val loss {val_loss:.4g}  chi2/dof {val_chi2:.3f}")
            if val_loss < best[0]:
                best = (val_loss, copy.deepcopy(model.state_dict()), epoch)
            elif epoch - best[2] >= settings.patience:
                break

    model.load_state_dict(best[1])
    model.eval()
    vae.history = history
    vae.meta = {
        "data_hash": data_hash(flux, ivar),
        "n_train": int(len(train_idx)),
        "n_val": int(n_val),
        "best_epoch": best[2],
        "epochs_run": len(history),
        "val_chi2_dof_median": history[best[2] - 1]["val_chi2_dof"],
        "code_version": __version__,
    }
    return vae


def _validation_loss(model: SpectrumVAE, x: torch.Tensor, w: torch.Tensor, s: VAESettings) -> float:
    """The training objective on the validation split, with the same noise draws every epoch."""
    gen = torch.Generator().manual_seed(s.seed + 1)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), 1024):
            xb, wb = x[start : start + 1024], w[start : start + 1024]
            x_hat, z, mu, logvar = model(xb, generator=gen)
            prior = torch.randn(z.shape, generator=gen)
            total += len(xb) * float(infovae_loss(xb, wb, x_hat, z, mu, logvar, prior, s.alpha, s.lam).total)
    return total / len(x)


def encode(vae: TrainedVAE, flux, ivar, batch_size: int = 4096) -> np.ndarray:
    """Latent means (the deterministic encoder output) [N, n_latent] float32."""
    flux, ivar = validate_spectra(flux, ivar, vae.model.arch.n_pix)
    x = _inputs(vae.mean_spectrum, flux, ivar)
    vae.model.eval()
    with torch.no_grad():
        out = [vae.model.encode(x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, vae.n_latent), np.float32)


def decode(vae: TrainedVAE, latents, batch_size: int = 4096) -> np.ndarray:
    """Spectra [N, n_pix] float32 in the table's normalisation (the mean spectrum added back)."""
    z = np.asarray(latents, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != vae.n_latent:
        raise InputError(f"latents have shape {z.shape}; expected (n, {vae.n_latent}) for this VAE")
    if not np.isfinite(z).all():
        bad = int((~np.isfinite(z)).any(axis=1).sum())
        raise InputError(f"latents contain NaN or infinite values in {bad} rows")
    vae.model.eval()
    zt = torch.from_numpy(z)
    with torch.no_grad():
        out = [vae.model.decode(zt[i : i + batch_size]) for i in range(0, len(zt), batch_size)]
    x = torch.cat(out).numpy() if out else np.zeros((0, vae.model.arch.n_pix), np.float32)
    return (x + vae.mean_spectrum).astype(np.float32)


def save_vae(vae: TrainedVAE, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the VAE directory atomically."""
    out_dir = Path(out_dir)
    tensors = {f"model.{k}": v.contiguous() for k, v in vae.model.state_dict().items()}
    tensors[MEAN_KEY] = torch.from_numpy(np.ascontiguousarray(vae.mean_spectrum, dtype=np.float32))
    meta = {k: v for k, v in vae.meta.items() if k != "weights_sha256"}
    config = VAEConfig(vae.model.arch, vae.settings, meta)
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": VAEConfig.FORMAT})
        config.write(tmp / CONFIG_FILE)
        with open(tmp / METRICS_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(vae.history)
    return out_dir


def load_vae(vae_dir: str | os.PathLike) -> TrainedVAE:
    """Read a VAE directory written by :func:`save_vae` (safetensors + JSON, nothing unpickled)."""
    vae_dir = Path(vae_dir)
    cfg_path, w_path = vae_dir / CONFIG_FILE, vae_dir / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise MissingFileError(
                f"{p} not found: {vae_dir} is not a VAE directory (write one with `galspec vae train`)"
            )
    cfg = VAEConfig.read(cfg_path)
    try:
        tensors = load_file(str(w_path))
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt files
        raise FormatError(f"{w_path} is not a readable safetensors file: {exc}") from None
    model = SpectrumVAE(cfg.arch)
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise FormatError(f"{w_path} does not match the architecture in {cfg_path}: {exc}") from exc
    model.eval()
    meta = dict(cfg.meta)
    meta["weights_sha256"] = file_sha256(w_path)
    history = []
    if (vae_dir / METRICS_FILE).is_file():
        with open(vae_dir / METRICS_FILE, newline="") as f:
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return TrainedVAE(model=model, mean_spectrum=tensors[MEAN_KEY].numpy(),
                      settings=cfg.training, meta=meta, history=history)


def _read_spectra(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(object_id, flux, ivar, z) of a spectra table, checked."""
    table = read_spectra_table(path)
    object_id = table[OBJECT_ID].to_numpy()
    flux, ivar = spectra_arrays(table)
    flux, ivar = validate_spectra(flux, ivar, object_id=object_id)
    return object_id, flux, ivar, table[REDSHIFT].to_numpy()


def train_vae(
    spectra_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_latent: int = D.N_LATENTS,
    settings: VAESettings = VAESettings(),
    overwrite: bool = False,
    progress: bool = False,
) -> TrainedVAE:
    """Train on a spectra table and write the VAE directory."""
    refuse_existing(out_dir, overwrite)
    _, flux, ivar, _ = _read_spectra(spectra_path)
    vae = fit_vae(flux, ivar, n_latent=n_latent, settings=settings, progress=progress)
    vae.meta["spectra"] = str(spectra_path)
    save_vae(vae, out_dir, overwrite=overwrite)
    return vae


def encode_spectra_table(
    vae_dir: str | os.PathLike, spectra_path: str | os.PathLike, out_path: str | os.PathLike,
    overwrite: bool = False,
) -> pa.Table:
    """Write the labels table: ``object_id``, the latent means ``latent_1..latent_N`` (float32) and
    the spectra's redshift ``z`` (a target the CNN also learns)."""
    vae = load_vae(vae_dir)
    object_id, flux, ivar, redshift = _read_spectra(spectra_path)
    z = encode(vae, flux, ivar)
    cols = {OBJECT_ID: pa.array(object_id.astype(np.int64))}
    cols.update({name: pa.array(z[:, i]) for i, name in enumerate(latent_names(vae.n_latent))})
    cols[REDSHIFT] = pa.array(np.asarray(redshift, np.float32))
    provenance = {
        "vae": str(vae_dir), "weights_sha256": vae.meta["weights_sha256"], "spectra": str(spectra_path)
    }
    table = pa.table(cols).replace_schema_metadata({VAE_METADATA_KEY: json.dumps(provenance)})
    with atomic_path(out_path, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp)
    return table


def decode_labels_table(
    vae_dir: str | os.PathLike, labels_path: str | os.PathLike, out_path: str | os.PathLike,
    overwrite: bool = False,
) -> pa.Table:
    """Write decoded spectra: ``object_id`` and ``flux`` (1000 float32, the table's normalisation)."""
    vae = load_vae(vae_dir)
    lab = read_labels(labels_path, vae.n_latent)
    ids, z = lab.object_id, lab.values
    flux = decode(vae, z)
    table = pa.table({
        OBJECT_ID: pa.array(ids),
        FLUX: pa.FixedSizeListArray.from_arrays(pa.array(flux.reshape(-1)), SPECTRUM_TYPE.list_size),
    })
    with atomic_path(out_path, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp)
    return table
