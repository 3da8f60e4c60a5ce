"""Decoded spectra: a catalog's predicted latents, with their MC-dropout spread, turned into
rest-frame spectra through the VAE decoder, with 16-84% bands and derived line measurements.

For each object, ``n_draws`` latent vectors are drawn from its predictive distribution, centred
on ``latent_i`` with the 1-sigma ``latent_i_std`` and, in a calibrated catalog, each latent's
Student-t shape (Gaussian otherwise; seeded by ``(seed, object_id)``, so an object decodes the
same whatever else is selected) and decoded. Per pixel the draws give the median spectrum and the
16th and 84th percentiles; per draw the derived quantities below give an MC median and std.

Equivalent widths (rest frame, Angstrom, positive for emission): ``EW = sum_i w_i (F_i / Fc_i - 1)``
over the line window, ``w_i`` the overlap of pixel i with the window, ``Fc`` the straight line
through the mean flux of the blue and red side bands at their centres. Windows (vacuum, Angstrom):

=========  =========  ==============  ==============  ==============
quantity   centre     line            blue band       red band
=========  =========  ==============  ==============  ==============
ew_oii     3728.5     3713 - 3741     3653 - 3713     3741 - 3801      (Balogh et al. 1999)
ew_hbeta   4862.7     4849 - 4877     4829 - 4849     4877 - 4892      (Lick Hbeta, in vacuum)
ew_oiii    5008.2     4998 - 5018     4978 - 4998     5018 - 5038
ew_halpha  6564.6     6554 - 6575     6490 - 6535     6600 - 6640
ew_nii     6585.3     6575 - 6595     6490 - 6535     6600 - 6640
=========  =========  ==============  ==============  ==============

The grid's pixels are 4-6 A wide at these lines, so Halpha and [NII] 6584 (20 A apart) are not
deblended: each window holds a wing of its neighbour. ``d4000`` is the narrow 4000 A break of
Balogh et al. (1999): mean f_nu over 4000-4100 A over mean f_nu over 3850-3950 A
(f_nu proportional to f_lambda lambda^2). A draw whose continuum is not positive gives no value;
quantities with no value are null.

``--write-back`` stores the derived columns in the catalog's HATS extension ``derived/`` (see
:mod:`galspec_batch.catalog.extension`), merged by ``object_id``; the primary catalog's files are
not rewritten.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path, refuse_existing
from galspec_batch.catalog import paths
from galspec_batch.catalog.extension import check_extension, merge_rows, read_extension, write_extension
from galspec_batch.catalog.lock import catalog_lock
from galspec_batch.catalog.reader import calibration_values, is_galspec, read_calibration
from galspec_batch.catalog.view import CatalogView
from galspec_batch.columns import (
    D4000,
    D4000_BLUE,
    D4000_RED,
    DEC,
    DERIVED,
    DERIVED_COLUMNS,
    FLUX_HI,
    FLUX_LO,
    FLUX_MEDIAN,
    LINES,
    OBJECT_ID,
    RA,
    SPECTRUM_TYPE,
    Z_PHOT,
    LineWindow,
    latent_names,
    std_column,
)
from galspec_batch.errors import IncompleteOutputError, InputError, UsageError
from galspec_batch.progress import progress_bar
from galspec_batch.regions import Region
from galspec_batch.spectra import LOGLAM_MAX, LOGLAM_MIN, N_BINS, WAVE, WAVE_EDGES
from galspec_batch.spectra_table import described_spectra_schema
from galspec_batch.uncertainty import NU_MAX, one_sigma

QUANTILES = (16.0, 50.0, 84.0)
DECODE_METADATA_KEY = b"galspec.decode"
DERIVED_METADATA_KEY = b"galspec.derived"


def window_weights(lo: float, hi: float, edges: np.ndarray = WAVE_EDGES) -> np.ndarray:
    """Overlap (Angstrom) of each pixel ``[edges[i], edges[i+1]]`` with ``[lo, hi]``."""
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)


def _band_mean(flux: np.ndarray, band: tuple[float, float], edges: np.ndarray,
               factor: np.ndarray | None = None) -> np.ndarray:
    """Overlap-weighted mean of ``flux * factor`` over ``band``."""
    w = window_weights(*band, edges)
    inside = np.flatnonzero(w)
    wf = w[inside] if factor is None else w[inside] * factor[inside]
    return flux[..., inside].astype(np.float64) @ wf / w.sum()


def equivalent_width(flux: np.ndarray, window: LineWindow, edges: np.ndarray = WAVE_EDGES) -> np.ndarray:
    """Rest-frame EW (A, emission > 0) of spectra ``flux`` [..., n_pix] on pixels ``edges``."""
    flux = np.asarray(flux)
    mid = 0.5 * (edges[1:] + edges[:-1])
    fb, fr = _band_mean(flux, window.blue, edges), _band_mean(flux, window.red, edges)
    lb, lr = np.mean(window.blue), np.mean(window.red)
    w = window_weights(*window.line, edges)
    inside = w > 0
    slope = (fr - fb) / (lr - lb)
    cont = fb[..., None] + slope[..., None] * (mid[inside] - lb)
    with np.errstate(divide="ignore", invalid="ignore"):
        ew = ((flux[..., inside].astype(np.float64) / cont - 1.0) * w[inside]).sum(axis=-1)
    return np.where((cont > 0).all(axis=-1), ew, np.nan)


def d4000(flux: np.ndarray, edges: np.ndarray = WAVE_EDGES) -> np.ndarray:
    """Narrow 4000 A break (Balogh et al. 1999) of spectra ``flux`` [..., n_pix] (f_lambda)."""
    flux = np.asarray(flux)
    mid = 0.5 * (edges[1:] + edges[:-1])
    red, blue = (_band_mean(flux, band, edges, factor=mid**2) for band in (D4000_RED, D4000_BLUE))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((blue > 0) & (red > 0), red / blue, np.nan)


def derived_quantities(flux: np.ndarray, edges: np.ndarray = WAVE_EDGES) -> dict[str, np.ndarray]:
    """Every derived quantity (``DERIVED``) of spectra ``flux`` [..., n_pix]."""
    out = {w.name: equivalent_width(flux, w, edges) for w in LINES}
    out[D4000] = d4000(flux, edges)
    return out


def sample_latents(mean: np.ndarray, std: np.ndarray, object_id: np.ndarray, n_draws: int,
                   seed: int = 0, nu: np.ndarray | None = None) -> np.ndarray:
    """Draws [N, n_draws, L] per object, seeded by ``(seed, object_id)``: ``mean + std * eps`` with
    eps Gaussian, or (``nu``, per latent) Student-t scaled so that +-1 holds 68.27% (std is the
    1-sigma of :mod:`galspec_batch.uncertainty`)."""
    L = mean.shape[1]
    heavy = None if nu is None else np.asarray(nu, np.float64) < NU_MAX

    def draw(oid: int) -> np.ndarray:
        rng = np.random.default_rng([int(seed), int(oid) % 2**64])
        eps = rng.standard_normal((n_draws, L))
        if heavy is not None and heavy.any():
            t = rng.standard_t(np.asarray(nu)[heavy], (n_draws, int(heavy.sum())))
            eps[:, heavy] = t / one_sigma(np.asarray(nu)[heavy])
        return eps

    eps = np.stack([draw(oid) for oid in object_id]) if len(object_id) else np.zeros((0, n_draws, L))
    return (mean[:, None, :] + std[:, None, :] * eps).astype(np.float32)


@dataclass
class DecodedSpectra:
    """Median and 16/84% spectra [N, n_pix] and each derived quantity's MC median and std [N]."""

    object_id: np.ndarray
    median: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    derived: dict[str, tuple[np.ndarray, np.ndarray]]


def decode_latents(vae, mean, std, object_id, *, n_draws: int = D.DECODE_DRAWS,
                   seed: int = D.SEED, nu: np.ndarray | None = None) -> DecodedSpectra:
    """Decode the predictive distribution of each object's latents (``vae`` a loaded TrainedVAE;
    ``nu`` the latents' t shapes, Gaussian when None)."""
    from galspec_batch.spectral_vae import decode

    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    object_id = np.asarray(object_id, dtype=np.int64)
    if n_draws < 2:
        raise UsageError(f"--draws must be >= 2 for percentiles and a std, got {n_draws}")
    if mean.shape != std.shape or mean.ndim != 2 or len(object_id) != len(mean):
        raise InputError(
            f"latent means {mean.shape}, stds {std.shape} and ids {object_id.shape} do not match"
        )
    if not (np.isfinite(std).all() and (std >= 0).all()):
        raise InputError("latent stds must be finite and >= 0")
    n, L = mean.shape
    z = sample_latents(mean, std, object_id, n_draws, seed, nu)
    flux = decode(vae, z.reshape(n * n_draws, L)).reshape(n, n_draws, -1)
    lo, med, hi = np.percentile(flux, QUANTILES, axis=1).astype(np.float32)
    derived = {}
    for name, values in derived_quantities(flux).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
            derived[name] = (np.nanmedian(values, axis=1), np.nanstd(values, axis=1, ddof=1))
    return DecodedSpectra(object_id, med, lo, hi, derived)


def _spectra_column(x: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(x, np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, N_BINS)


def _nullable(x: np.ndarray) -> pa.Array:
    x = np.asarray(x, dtype=np.float32)
    return pa.array(x, pa.float32(), mask=~np.isfinite(x))  # NaN sorts above every number in DuckDB


def derived_table(d: DecodedSpectra) -> pa.Table:
    cols = {OBJECT_ID: pa.array(d.object_id, pa.int64())}
    for name in DERIVED:
        med, sd = d.derived[name]
        cols[name], cols[std_column(name)] = _nullable(med), _nullable(sd)
    return pa.table(cols)


def decoded_schema(z_cols: list[str], provenance: dict) -> pa.Schema:
    """A decoded-spectra file's schema: ``provenance`` and the grid under ``DECODE_METADATA_KEY``,
    units, descriptions and the grid as for a spectra table (``described_spectra_schema``)."""
    meta = {**provenance, "loglam": [LOGLAM_MIN, LOGLAM_MAX, N_BINS],
            "wave": [round(float(w), 4) for w in WAVE]}
    return described_spectra_schema(pa.schema(
        [pa.field(OBJECT_ID, pa.int64()), pa.field(RA, pa.float64()), pa.field(DEC, pa.float64())]
        + [pa.field(c, pa.float32()) for c in z_cols]
        + [pa.field(c, SPECTRUM_TYPE) for c in (FLUX_MEDIAN, FLUX_LO, FLUX_HI)]
        + [pa.field(c, pa.float32()) for c in DERIVED_COLUMNS],
        metadata={DECODE_METADATA_KEY: json.dumps(meta)},
    ))


@dataclass(frozen=True)
class DecodeSummary:
    out: Path
    n_objects: int
    n_draws: int
    derived: Path | None
    calibrated: bool = True

    def __str__(self) -> str:
        back = f"; derived columns written back to {self.derived}" if self.derived else ""
        note = "" if self.calibrated else (" (UNCALIBRATED: drawn from the network's own spread, which is "
                                           "not calibrated; see galspec calibrate)")
        return f"wrote {self.out}: {self.n_objects} spectra from {self.n_draws} latent draws each{back}{note}"


def decode_catalog(
    catalog: str | Path,
    vae_dir: str | Path,
    out: str | Path,
    *,
    ids=None,
    where: str | None = None,
    region: Region | str | None = None,
    n_draws: int = D.DECODE_DRAWS,
    seed: int = D.SEED,
    batch_size: int = 256,
    write_back: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> DecodeSummary:
    """Decode the objects of ``catalog`` chosen by ``ids`` and/or ``where``/``region`` (all when
    none is given) into ``out`` (Parquet): object_id, ra, dec, the catalog's z_phot and its std
    where it has them, flux_median/lo/hi [1000] float32 and the derived quantities with their
    ``_std``, with units, descriptions and the grid in its metadata (``decoded_schema``);
    ``write_back`` also updates the catalog's derived extension (of a catalog galspec wrote)."""
    from galspec_batch.spectral_vae import load_vae

    if write_back and not is_galspec(catalog):
        raise UsageError(f"--write-back adds an extension to a catalog galspec wrote; {catalog} is not one "
                         "(decode it without --write-back)")
    out = Path(out)
    refuse_existing(out, overwrite)
    vae = load_vae(vae_dir)
    wanted = None if ids is None else np.unique(np.asarray(ids, dtype=np.int64))
    with CatalogView(catalog, region, ids=wanted) as view:
        L = view.n_latents
        if L != vae.n_latent:
            raise InputError(
                f"catalog {catalog} has {L} latents but the VAE {vae_dir} decodes {vae.n_latent}"
            )
        names = latent_names(L)
        z_cols = [Z_PHOT, std_column(Z_PHOT)] if Z_PHOT in view.columns else []
        cols = [OBJECT_ID, RA, DEC, *z_cols, *names, *(std_column(n) for n in names)]
        rel = view.relation(where).project(", ".join(f'"{c}"' for c in cols)).order(OBJECT_ID)
        rows = view.run(lambda: pa.table(rel), where)
    if wanted is not None:
        missing = np.setdiff1d(wanted, rows[OBJECT_ID].to_numpy())
        if len(missing):
            raise InputError(f"{len(missing)} object ids are not in catalog {catalog}"
                             f"{' (or not selected)' if where or region else ''}: {missing[:10].tolist()}")
    if rows.num_rows == 0:
        raise InputError(f"no object of catalog {catalog} is selected (--where {where!r}, --region {region})")
    cal = read_calibration(catalog)
    nu = None if not cal else calibration_values(cal, "nu", names)
    provenance = {
        "catalog": str(catalog), "vae": str(vae_dir), "vae_weights_sha256": vae.meta.get("weights_sha256"),
        "n_draws": int(n_draws), "seed": int(seed), "quantiles": list(QUANTILES),
        "where": where, "region": None if region is None else str(region),
        "calibrated": bool(cal), "latent_nu": None if nu is None else nu.tolist(),
    }
    schema = decoded_schema(z_cols, provenance)
    derived_parts = []
    with atomic_path(out, overwrite=overwrite) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
            progress_bar(rows.num_rows, "decode", "spectra", enabled=progress) as advance:
        for start in range(0, rows.num_rows, batch_size):
            b = rows.slice(start, batch_size)
            mean = np.stack([b[n].to_numpy() for n in names], axis=1)
            std = np.stack([b[std_column(n)].to_numpy() for n in names], axis=1)
            d = decode_latents(vae, mean, std, b[OBJECT_ID].to_numpy(), n_draws=n_draws, seed=seed, nu=nu)
            dt = derived_table(d)
            derived_parts.append(dt)
            arrays = [b[OBJECT_ID], b[RA], b[DEC], *(b[c] for c in z_cols), _spectra_column(d.median),
                      _spectra_column(d.lo), _spectra_column(d.hi), *(dt[c] for c in DERIVED_COLUMNS)]
            writer.write_table(pa.Table.from_arrays([pa.chunked_array([a]) if isinstance(a, pa.Array) else a
                                                     for a in arrays], schema=schema))
            advance(b.num_rows)
    extension = None
    if write_back:
        with catalog_lock(catalog, command="galspec decode --write-back"):
            extension = write_derived(catalog, pa.concat_tables(derived_parts), provenance, replace=overwrite)
    return DecodeSummary(out, rows.num_rows, n_draws, extension, calibrated=bool(cal))


def write_derived(catalog: str | Path, table: pa.Table, provenance: dict, *, replace: bool = False) -> Path:
    """Merge derived columns into the catalog's derived extension by ``object_id`` (new rows win).
    An extension made by another VAE is refused unless ``replace``, which starts it afresh."""
    catalog = Path(catalog)
    table = table.select([OBJECT_ID, *DERIVED_COLUMNS])
    damage = check_extension(catalog)
    if damage is not None and not replace:
        raise IncompleteOutputError(f"{damage}; pass --overwrite to write the extension afresh from this run")
    old = read_extension(catalog) if damage is None else None
    if old is not None:
        old_meta = json.loads((old.schema.metadata or {}).get(DERIVED_METADATA_KEY, b"{}"))
        same = old_meta.get("vae_weights_sha256") == provenance.get("vae_weights_sha256")
        if not same and not replace:
            raise InputError(
                f"{paths.derived_dir(catalog)} holds quantities decoded with another VAE "
                f"({old_meta.get('vae')}); "
                "pass --overwrite to replace them"
            )
        table = merge_rows(old if same else None, table)
    return write_extension(catalog, table, {DERIVED_METADATA_KEY: json.dumps(provenance).encode()})


def read_decoded(
    path: str | Path, n: int | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], pa.Table]:
    """The wavelength grid, the spectra (``median``, ``lo``, ``hi`` [n, 1000]) and the other
    columns of the first ``n`` rows of a decoded-spectra file."""
    pf = pq.ParquetFile(path)
    meta = json.loads(pf.schema_arrow.metadata[DECODE_METADATA_KEY])
    table = pf.read()
    table = table if n is None else table.slice(0, n)
    spectra = {k: np.asarray(table[c].combine_chunks().flatten(), np.float32).reshape(-1, N_BINS)
               for k, c in (("median", FLUX_MEDIAN), ("lo", FLUX_LO), ("hi", FLUX_HI))}
    return np.asarray(meta["wave"]), spectra, table.drop_columns([FLUX_MEDIAN, FLUX_LO, FLUX_HI])
