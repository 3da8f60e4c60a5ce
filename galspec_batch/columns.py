"""Every column name the package shares, defined once: ids and positions, spectra, latents and their
spreads, quality bits, the spectrum type, and the emission-line windows of derived quantities."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import pyarrow as pa

from galspec_batch.errors import InputError
from galspec_batch.sky import SPATIAL_INDEX_COLUMN
from galspec_batch.spectra import N_BINS

OBJECT_ID = "object_id"
RA = "ra"
DEC = "dec"
HEALPIX = SPATIAL_INDEX_COLUMN
MC_SAMPLES = "mc_samples"
QUALITY_FLAGS = "quality_flags"
MODEL_ID = "model_id"
PROB = "prob"  # target lists: the probability that a --prob condition holds
PRIORITY = "priority"
SPREAD = "spread"  # target lists ranked by uncertainty
ANOMALY_SCORE = "anomaly_score"  # `galspec anomalies` output
ANOMALY_PVALUE = "anomaly_pvalue"
OOD_SCORE = "ood_score"
FLAG = "flag"

LATENT_PREFIX = "latent_"
STD_SUFFIX = "_std"
ALEATORIC_SUFFIX = "_std_aleatoric"  # the two parts of a predictive std: total^2 = ale^2 + epi^2
EPISTEMIC_SUFFIX = "_std_epistemic"
REDSHIFT = "z"  # the spectroscopic redshift: a spectra table's and a labels table's column, a target
Z_PHOT = "z_phot"  # the predicted (photometric) redshift in a catalog
FLUX = "flux"  # a spectra table's normalised rest-frame spectrum, and its inverse variance
IVAR = "ivar"
NORM = "norm"  # the divisor of a spectra table's flux
FLUX_MEDIAN, FLUX_LO, FLUX_HI = "flux_median", "flux_lo", "flux_hi"  # decoded spectra: 50th, 16th, 84th pct
NORM_UNIT = "1e-17 erg / (Angstrom s cm2)"  # SDSS's flux unit, of the rest-frame (1+z) f_lambda(obs)
LATENT_RE = re.compile(rf"^{LATENT_PREFIX}([1-9]\d*)$")  # latent_1, not latent_01

SPECTRUM_TYPE = pa.list_(pa.float32(), N_BINS)  # one rest-frame spectrum on the 1000-bin grid


def latent_column(i: int) -> str:
    """Name of latent ``i`` (1-based), e.g. ``latent_3``."""
    return f"{LATENT_PREFIX}{i}"


def std_column(name: str) -> str:
    """Name of the spread of quantity ``name``, e.g. ``latent_3_std``, ``ew_halpha_std``."""
    return f"{name}{STD_SUFFIX}"


def latent_std_column(i: int) -> str:
    """Name of the predictive spread of latent ``i`` (1-based), e.g. ``latent_3_std``."""
    return std_column(latent_column(i))


def aleatoric_column(name: str) -> str:
    """The aleatoric part of the spread of ``name`` (the head's predicted variance)."""
    return f"{name}{ALEATORIC_SUFFIX}"


def epistemic_column(name: str) -> str:
    """The epistemic part of the spread of ``name`` (the spread of the MC-dropout means)."""
    return f"{name}{EPISTEMIC_SUFFIX}"


def catalog_column(target: str) -> str:
    """The catalog column of a checkpoint's target: ``latent_i`` as it is, ``z`` as ``z_phot``."""
    return Z_PHOT if target == REDSHIFT else target


def latent_names(n: int) -> list[str]:
    """``latent_1`` .. ``latent_n``."""
    return [latent_column(i) for i in range(1, n + 1)]


def count_latents(columns: list[str], what: str) -> int:
    """The number of latent columns ``latent_1..latent_N`` in ``columns``, checked to be contiguous."""
    numbered = {c: int(m.group(1)) for c in columns if (m := re.match(rf"^{LATENT_PREFIX}(\d+)$", c))}
    odd = [c for c, i in numbered.items() if c != latent_column(i) and i > 0]
    if odd:
        raise InputError(f"{what} has column {odd[0]!r}; latent columns are named latent_1, latent_2, ...")
    found = sorted(numbered.values())
    if not found:
        raise InputError(f"{what} has no latent columns latent_1..latent_N (columns: {columns})")
    if found != list(range(1, len(found) + 1)):
        raise InputError(f"{what} has latent columns {found}; expected latent_1..latent_{len(found)}")
    return len(found)


class QualityFlag(enum.IntFlag):
    """Per-object quality bits (16 of them), shared by the store's ``flags`` (uint16) and the
    catalog's ``quality_flags`` (int32; documented in catalogs/catalog-format.md)."""

    NAN_PIXELS = 1  # some pixels are NaN (kept in the store, zero for the CNN)
    MISSING_BAND = 2  # a band was not observed (zero-filled or all NaN; mask False)
    LOW_COVERAGE = 4  # reserved: too few valid pixels for a trustworthy prediction
    OUT_OF_DISTRIBUTION = 8  # set by `galspec anomalies` on flagged objects
    INF_PIXELS = 16  # some pixels are +-inf (kept in the store, zero for the CNN)
    CONSTANT_BAND = 32  # an observed band holds one value everywhere (e.g. all zero)
    EXTREME_PIXELS = 64  # a pixel beyond AB magnitude 0 in size, or clipped to the float16 range
    BAD_PREDICTION = 128  # a predicted latent or spread was not finite: this row's latents are null


@dataclass(frozen=True)
class LineWindow:
    """An equivalent-width definition: line window and side bands, rest-frame vacuum Angstrom."""

    name: str
    label: str
    center: float
    line: tuple[float, float]
    blue: tuple[float, float]
    red: tuple[float, float]


LINES = (
    LineWindow("ew_oii", "[OII]", 3728.5, (3713.0, 3741.0), (3653.0, 3713.0), (3741.0, 3801.0)),
    LineWindow("ew_hbeta", "Hb", 4862.7, (4849.0, 4877.0), (4829.0, 4849.0), (4877.0, 4892.0)),
    LineWindow("ew_oiii", "[OIII]", 5008.2, (4998.0, 5018.0), (4978.0, 4998.0), (5018.0, 5038.0)),
    LineWindow("ew_halpha", "Ha", 6564.6, (6554.0, 6575.0), (6490.0, 6535.0), (6600.0, 6640.0)),
    LineWindow("ew_nii", "[NII]", 6585.3, (6575.0, 6595.0), (6490.0, 6535.0), (6600.0, 6640.0)),
)
D4000 = "d4000"
D4000_BLUE = (3850.0, 3950.0)
D4000_RED = (4000.0, 4100.0)
DERIVED = tuple(w.name for w in LINES) + (D4000,)
DERIVED_COLUMNS = tuple(c for q in DERIVED for c in (q, std_column(q)))


def describe_column(name: str) -> tuple[str | None, str]:
    """(unit, description) of a column galspec writes; (None, "") for one it does not know.
    Units are astropy/FITS strings; a latent is in the spectrum VAE's own (unitless) scale."""
    fixed = {
        OBJECT_ID: (None, "object id, unique in the survey"),
        RA: ("deg", "right ascension (ICRS)"),
        DEC: ("deg", "declination (ICRS)"),
        HEALPIX: (None, "NESTED HEALPix index at order 29 of (ra, dec)"),
        MC_SAMPLES: (None, "MC-dropout samples behind the prediction"),
        QUALITY_FLAGS: (None, "QualityFlag bits (catalogs/catalog-format.md); 0 is clean"),
        MODEL_ID: (None, "the model that made the prediction"),
        Z_PHOT: (None, "predicted (photometric) redshift"),
        D4000: (None, "narrow 4000 A break of the decoded spectrum (Balogh et al. 1999), MC median"),
        PROB: (None, "probability that the --prob condition holds"),
        PRIORITY: (None, "target priority (higher first)"),
        SPREAD: (None, "RMS of the latents' 1-sigma, each over that latent's scatter in the catalog"),
        ANOMALY_SCORE: (None, "squared Mahalanobis distance of the observed latents from the predicted "
                              "distribution (calibrated)"),
        ANOMALY_PVALUE: (None, "p-value of anomaly_score under the calibration's null model"),
        OOD_SCORE: (None, "distance of the predicted latents from their neighbours, in units of the "
                          "catalog's typical distance (no labels needed)"),
        FLAG: (None, "flagged: anomaly_pvalue < alpha where labelled, else ood_score > threshold"),
        REDSHIFT: (None, "spectroscopic redshift, used for the shift to the rest frame"),
        FLUX: (None, "rest-frame f_lambda on the grid divided by norm (mean 1 over the bins with ivar > 0); "
                     "0 where ivar is 0"),
        IVAR: (None, "inverse variance of flux (same normalisation); 0 = no data"),
        NORM: (NORM_UNIT, "divisor of the flux: plain mean of the rest-frame f_lambda, (1+z) times the "
                          "observed one, over the bins with ivar > 0"),
    }
    fixed.update({c: (None, f"{pct} percentile over the decoded draws, per bin, normalised as a spectra "
                            "table's flux (mean about 1)")
                  for c, pct in ((FLUX_MEDIAN, "50th"), (FLUX_LO, "16th"), (FLUX_HI, "84th"))})
    fixed.update({w.name: ("Angstrom", f"rest-frame equivalent width of {w.label} in the decoded spectrum "
                                       "(emission > 0), MC median") for w in LINES})
    parts = {ALEATORIC_SUFFIX: "aleatoric part of the 1-sigma of ", EPISTEMIC_SUFFIX: "epistemic part of the "
             "1-sigma of ", STD_SUFFIX: "standard deviation (1-sigma) of "}
    for suffix, what in parts.items():
        if name.endswith(suffix) and name != suffix:
            unit, description = describe_column(name[: -len(suffix)])
            return unit, f"{what}{name[: -len(suffix)]}" if description else ""
    if LATENT_RE.match(name):
        return None, f"predicted spectral latent {name[len(LATENT_PREFIX):]} (the spectrum VAE's units)"
    return fixed.get(name, (None, ""))
