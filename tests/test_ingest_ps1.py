"""Pan-STARRS stacks in ``galspec ingest``: asinh-scaled pixels back to linear flux, zero points
from EXPTIME, and PS1 files that cannot be linearised refused. The files are built here from known
linear flux, compressed the way the IPP does it (ingest/ps1.py cites the formulas)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from click.testing import CliRunner

from galspec_batch.cli import main
from galspec_batch.errors import InputError
from galspec_batch.ingest import ps1
from galspec_batch.ingest.cutouts import ingest_cutouts
from galspec_batch.store import open_store

GRIZY = ("g", "r", "i", "z", "y")
EXPTIME = {"g": 1130.0, "r": 910.0, "i": 1410.0, "z": 640.0, "y": 520.0}  # seconds, one stack each
A = 2.5 / math.log(10)
N = 32


def test_the_constant_is_the_ipps():
    assert ps1.ASINH_A == pytest.approx(1.0857362, abs=1e-7)


def _linear(band: str) -> np.ndarray:
    """Known linear flux: sky noise around 0, a bright galaxy peaking near 2e5 counts, a negative
    pixel and one exact value to check by number."""
    rng = np.random.default_rng(GRIZY.index(band))
    y, x = np.mgrid[:N, :N]
    flux = rng.normal(0.0, 30.0, (N, N)) + 2e5 * (1 + GRIZY.index(band)) * np.exp(
        -((x - 15.5) ** 2 + (y - 15.5) ** 2) / 8.0
    )
    flux[3, 4], flux[10, 20] = -250.0, 12345.0
    return flux


def _header(band: str, exptime: float | None = None, **extra) -> fits.Header:
    h = fits.Header()
    h.update(
        CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.1, CRVAL2=2.2, CRPIX1=16.5, CRPIX2=16.5,
        CDELT1=-0.25 / 3600, CDELT2=0.25 / 3600, RADESYS="FK5", TELESCOP="PS1", INSTRUME="GPC1",
    )
    h["HIERARCH FPA.FILTER"] = f"{band}.00000"
    if exptime is not None:
        h["EXPTIME"] = exptime
    for key, value in extra.items():
        h[key] = value
    return h


def _compress(linear: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The IPP's asinh compression: BOFFSET = mean, BSOFTEN = sqrt(a) * std (the IPP wiki)."""
    boffset, bsoften = float(linear.mean()), math.sqrt(A) * float(linear.std())
    return A * np.arcsinh((linear - boffset) / (2 * bsoften)), boffset, bsoften


def _write_stack(path: Path, band: str, int16: bool = False, **extra) -> tuple[np.ndarray, float, float]:
    """One asinh-scaled stack image; ``int16``: tile-compressed 16-bit with BSCALE as the archive
    serves skycells. Returns the values as stored (after quantising), BOFFSET and BSOFTEN."""
    scaled, boffset, bsoften = _compress(_linear(band))
    header = _header(band, EXPTIME[band], BSOFTEN=bsoften, BOFFSET=boffset, **extra)
    if int16:
        hdu = fits.CompImageHDU(scaled.astype(np.float32), header)
        hdu.scale("int16", bscale=1e-3, bzero=0.0)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        with fits.open(path) as h:
            return h[1].data.astype(np.float64), boffset, bsoften
    fits.PrimaryHDU(scaled.astype(np.float32), header).writeto(path)
    return scaled.astype(np.float32).astype(np.float64), boffset, bsoften


def _stacks(folder: Path, objid: str = "108761501234567890") -> dict[str, tuple]:
    folder.mkdir(parents=True, exist_ok=True)
    return {b: _write_stack(folder / f"{objid}_{b}.fits", b, int16=(b == "g")) for b in GRIZY}


def test_asinh_stacks_ingest_back_to_their_linear_flux_on_one_zero_point(tmp_path):
    stored = _stacks(tmp_path / "in")
    report = ingest_cutouts([tmp_path / "in"], tmp_path / "s.zarr")
    assert report.n_ingested == 1 and not report.quarantined
    s = open_store(tmp_path / "s.zarr")
    # every band on AB 25: PS1 pixels per second of EXPTIME
    assert s.attrs.zero_points == dict.fromkeys(GRIZY, 25.0)
    image = s.read([0]).images[0].astype(np.float64)
    for k, b in enumerate(GRIZY):
        linear, t = _linear(b), EXPTIME[b]
        if b == "g":  # 16-bit quantised: at most BSCALE/2 off, times the slope of the sinh
            scaled, _, bsoften = stored[b]
            bound = 2 * bsoften * np.cosh(scaled / A) / A * 0.5e-3 * 1.001 + 1e-6 * np.abs(linear)
            assert np.all(np.abs(image[k] * t - linear) <= bound)
            assert np.abs(image[k] * t - linear).max() > 0  # quantised, so not exact
        else:  # float32 asinh values and a float32 store: a few parts in 1e7 of the flux
            np.testing.assert_allclose(image[k] * t, linear, rtol=2e-6, atol=1e-3)
            assert image[k, 10, 20] == pytest.approx(12345.0 / t, rel=1e-6)
            assert image[k, 3, 4] == pytest.approx(-250.0 / t, rel=1e-5)
            # the AB magnitude the header's own zero point gives the linear flux
            mag_header = 25 + 2.5 * math.log10(t) - 2.5 * math.log10(12345.0)
            assert 25 - 2.5 * math.log10(image[k, 10, 20]) == pytest.approx(mag_header, abs=1e-6)


def test_a_given_zero_point_is_the_stores_and_fpa_zp_is_read(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    header_zp = 24.5 + 2.5 * math.log10(EXPTIME["r"])
    _write_stack(folder / "7_r.fits", "r", **{"HIERARCH FPA.ZP": 24.5})
    report = ingest_cutouts([folder], tmp_path / "s.zarr", zero_point=header_zp)
    assert report.n_ingested == 1
    s = open_store(tmp_path / "s.zarr")
    assert s.attrs.zero_points == dict.fromkeys(GRIZY, pytest.approx(header_zp))
    # at the header's own zero point the pixels are the linear flux itself
    np.testing.assert_allclose(s.read([0]).images[0][1], _linear("r"), rtol=2e-6, atol=1e-3)
    ingest_cutouts([folder], tmp_path / "t.zarr", zero_point=22.5)  # nanomaggies
    r = open_store(tmp_path / "t.zarr").read([0]).images[0][1]
    np.testing.assert_allclose(r, _linear("r") * 10 ** (0.4 * (22.5 - header_zp)), rtol=2e-6, atol=1e-6)


def test_linear_ps1_cutouts_and_other_files_are_left_as_they_are(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    data = _linear("i").astype(np.float32)
    fits.PrimaryHDU(data, _header("i")).writeto(folder / "5_i.fits")  # a fitscut cutout: no keywords
    fits.PrimaryHDU(data, _header("z", 300.0)).writeto(folder / "5_z.fits")
    zp = 25 + 2.5 * math.log10(300.0)
    ingest_cutouts([folder], tmp_path / "s.zarr", zero_point=zp)
    image = open_store(tmp_path / "s.zarr").read([0]).images[0]
    np.testing.assert_array_equal(image[2], data)  # no EXPTIME: taken to be at the given zero point
    np.testing.assert_array_equal(image[3], data)  # at its own zero point: the same bytes
    assert ps1.linearise(data, _header("i"), folder / "5_i.fits") is data


def _refused(folder: Path) -> dict[str, Path]:
    """PS1 files that cannot be linearised or calibrated, one object each."""
    folder.mkdir(parents=True, exist_ok=True)
    scaled, boffset, bsoften = _compress(_linear("g"))
    c = scaled.astype(np.float32)
    files = {
        "no_boffset": (folder / "1_g.fits", _header("g", 900.0, BSOFTEN=bsoften)),
        "no_bsoften": (folder / "rings.v3.skycell.1725.051.stk.g.unconv.fits", fits.Header({"BOFFSET": 1.0})),
        "bad_soften": (folder / "3_g.fits", _header("g", 900.0, BSOFTEN=-1.0, BOFFSET=boffset)),
        "no_exptime": (folder / "4_g.fits", _header("g", 0.0)),
    }
    for path, header in files.values():
        fits.PrimaryHDU(c, header).writeto(path)
    cube_header = _header("g", 900.0, BSOFTEN=bsoften, BOFFSET=boffset, BANDS="gr")
    fits.PrimaryHDU(np.stack([c, c]), cube_header).writeto(folder / "cube.fits")
    return {k: v[0] for k, v in files.items()} | {"cube": folder / "cube.fits"}


def test_ps1_files_that_cannot_be_linearised_are_quarantined(tmp_path):
    bad = _refused(tmp_path / "bad")
    _stacks(tmp_path / "good")
    report = ingest_cutouts([tmp_path / "good", *bad.values()], tmp_path / "s.zarr")
    assert report.n_ingested == 1 and len(report.quarantined) == 5
    q = pd.read_csv(report.quarantine_file)
    reason = dict(zip(q.path, q.reason, strict=True))
    r = {k: reason[str(p)] for k, p in bad.items()}
    assert r["no_boffset"] == (
        f"{bad['no_boffset']}: asinh-scaled Pan-STARRS pixels with BSOFTEN but no BOFFSET: "
        "cannot turn them back into linear flux"
    )
    assert "with BOFFSET but no BSOFTEN" in r["no_bsoften"]  # PS1 by its skycell name alone
    assert "BSOFTEN = -1.0" in r["bad_soften"] and "needs a positive BSOFTEN" in r["bad_soften"]
    assert "EXPTIME = 0.0 gives no zero point" in r["no_exptime"]
    assert "a 2-plane cube with one BSOFTEN/BOFFSET pair" in r["cube"]
    assert all("\n" not in x for x in q.reason)
    with pytest.raises(InputError, match=r"1_g\.fits: asinh-scaled .* BSOFTEN but no BOFFSET"):
        ingest_cutouts([bad["no_boffset"]], tmp_path / "t.zarr")


def test_objects_that_cannot_join_the_stores_zero_point_are_quarantined(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _write_stack(folder / "1_g.fits", "g")
    plain = _header("g")
    del plain["TELESCOP"], plain["INSTRUME"], plain["FPA.FILTER"]
    plain["FILTER"] = "g"
    fits.PrimaryHDU(_linear("g").astype(np.float32), plain).writeto(folder / "2_g.fits")
    report = ingest_cutouts([folder], tmp_path / "s.zarr")
    assert report.n_ingested == 1 and open_store(tmp_path / "s.zarr").object_id.tolist() == [1]
    (q,) = report.quarantined
    assert "2_g.fits: band g has no zero point in its header (PS1 EXPTIME)" in q.reason
    assert "at AB 25.0 from PS1 headers; pass --zero-point" in q.reason
    # the other way round: the store's zero point is unknown, so a PS1 stack cannot join it
    (folder / "1_g.fits").rename(folder / "3_g.fits")
    report = ingest_cutouts([folder], tmp_path / "t.zarr")
    assert open_store(tmp_path / "t.zarr").object_id.tolist() == [2]
    zp = 25 + 2.5 * math.log10(EXPTIME["g"])
    assert f"3_g.fits: band g is at AB zero point {zp:.3f} (header EXPTIME)" in report.quarantined[0].reason
    # with --zero-point both are on one scale
    assert ingest_cutouts([folder], tmp_path / "u.zarr", zero_point=30.0).n_ingested == 2


def test_cli(tmp_path):
    _stacks(tmp_path / "in")
    bad = _refused(tmp_path / "bad")
    runner = CliRunner()
    r = runner.invoke(main, ["ingest", str(tmp_path / "in"), "-o", str(tmp_path / "s.zarr"), "-q"])
    assert r.exit_code == 0, r.output
    assert "ingested 1 objects" in r.stdout
    assert open_store(tmp_path / "s.zarr").attrs.zero_points == dict.fromkeys(GRIZY, 25.0)
    r = runner.invoke(main, ["ingest", str(bad["no_boffset"]), "-o", str(tmp_path / "t.zarr"), "-q"])
    assert r.exit_code == 1
    assert r.stderr == (
        f"galspec: error: {bad['no_boffset']}: asinh-scaled Pan-STARRS pixels with BSOFTEN but no "
        "BOFFSET: cannot turn them back into linear flux\n"
    )
    r = runner.invoke(main, ["ingest", str(tmp_path / "in"), *map(str, bad.values()), "-o",
                             str(tmp_path / "u.zarr"), "--zero-point", "22.5", "-q"])
    assert r.exit_code == 0, r.output
    assert "quarantined 5" in r.stdout and r.stderr.count("galspec: quarantined: ") == 5
    assert open_store(tmp_path / "u.zarr").attrs.zero_points == dict.fromkeys(GRIZY, 22.5)
