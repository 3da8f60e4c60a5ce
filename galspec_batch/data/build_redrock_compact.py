"""Rebuild ``redrock_galaxy_compact.npz`` from the DESI redrock galaxy template file.

Run once by hand (never at run time): ``python build_redrock_compact.py rrtemplate-galaxy.fits``.
It bin-averages the 5 PCA basis vectors (rest frame, vacuum, 0.1 A) onto log10(lambda) 3.40-4.00
in steps of 1e-4, removes the nebular emission lines from each basis vector by linear interpolation
across fixed windows (the mock survey adds its own lines, tied to the disk's star formation) and
keeps the 750 x 5 archetype coefficients of real galaxies. Licence: LICENSE-redrock-templates.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

LOGLAM = np.round(np.arange(3.40, 4.0 + 5e-5, 1e-4), 6)

# (lo, hi) vacuum Angstrom windows holding emission lines in the archetypes
LINE_WINDOWS = [
    (3715, 3742), (3860, 3878), (3882, 3898), (3963, 3979), (4094, 4112), (4332, 4352),
    (4356, 4370), (4852, 4874), (4952, 4968), (4998, 5018), (5868, 5886), (6294, 6310),
    (6358, 6372), (6538, 6598), (6706, 6744), (7060, 7074), (7130, 7144), (7314, 7338),
    (9062, 9080), (9522, 9544),
]


def build(src: Path, dst: Path) -> None:
    with fits.open(src) as hdul:
        basis = np.asarray(hdul["BASIS_VECTORS"].data, dtype=np.float64)
        coeff = np.asarray(hdul["ARCHETYPE_COEFF"].data, dtype=np.float64)
        h = hdul["BASIS_VECTORS"].header
        wave = h["CRVAL1"] + h["CDELT1"] * np.arange(basis.shape[1])
    edges = 10 ** np.concatenate([[LOGLAM[0] - 5e-5], LOGLAM + 5e-5])
    cs = np.concatenate([np.zeros((basis.shape[0], 1)), np.cumsum(basis, axis=1)], axis=1)
    idx = np.searchsorted(wave, edges)
    binned = (cs[:, idx[1:]] - cs[:, idx[:-1]]) / np.maximum(idx[1:] - idx[:-1], 1)
    w = 10**LOGLAM
    for lo, hi in LINE_WINDOWS:
        inside = (w >= lo) & (w <= hi)
        outside = ~inside
        for k in range(binned.shape[0]):
            binned[k, inside] = np.interp(w[inside], w[outside], binned[k, outside])
    np.savez_compressed(dst, loglam=LOGLAM, basis=binned.astype(np.float32),
                        archetype_coeff=coeff.astype(np.float32))


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(__file__).with_name("redrock_galaxy_compact.npz"))
