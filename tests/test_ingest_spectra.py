"""SDSS spec-*.fits ingest with the real plate-266 spectra in tests/data/sdss_spectra."""

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from click.testing import CliRunner

from galspec_batch.cli import main
from galspec_batch.columns import NORM_UNIT
from galspec_batch.errors import FormatError, InputError
from galspec_batch.ingest import sdss
from galspec_batch.ingest.sdss import ingest_spectra, plate_mjd_fiber_id, read_sdss_spectrum
from galspec_batch.spectra import WAVE, WAVE_EDGES
from galspec_batch.spectra_table import GRID_KEY, read_spectra_table, spectra_arrays

DATA = Path(__file__).parent / "data" / "sdss_spectra"
REPEATS = [(166, 174), (526, 525)]  # fibers: the same galaxies on MJD 51602 and 51630


def _chi2_dof(f1, iv1, f2, iv2):
    """chi2/dof of the difference over bins valid in both, each spectrum rescaled to unit mean
    there (the stored norms use each spectrum's own valid bins, which differ with the masks)."""
    ok = (iv1 > 0) & (iv2 > 0)
    m1, m2 = f1[ok].mean(), f2[ok].mean()
    var = 1 / (iv1[ok] * m1**2) + 1 / (iv2[ok] * m2**2)
    return float(np.mean((f1[ok] / m1 - f2[ok] / m2) ** 2 / var)), int(ok.sum())


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("spectra") / "sdss.parquet"
    report = ingest_spectra([DATA], out, min_grid_coverage=0.4)
    assert report.n_ingested == 8 and not report.quarantined
    return read_spectra_table(out)


def test_reads_the_specobj_row():
    s = read_sdss_spectrum(DATA / "spec-0266-51602-0166.fits")
    assert s.object_id == 299535031829817344  # SPECOBJID
    assert s.z == pytest.approx(0.0215855, abs=1e-6) and s.zwarning == 0
    assert (s.ra, s.dec) == pytest.approx((146.23184, 0.068229156))
    assert (s.plate, s.mjd, s.fiber) == (266, 51602, 166)
    assert s.flux.size == s.loglam.size == 3846 and np.all(np.diff(s.loglam) > 0)
    assert read_sdss_spectrum(DATA / "spec-0266-51602-0166.fits", "plate-mjd-fiber").object_id == 266516020166
    assert plate_mjd_fiber_id(266, 51602, 166) == 266516020166
    # the photometric object is shared by the repeat spectrum
    a = read_sdss_spectrum(DATA / "spec-0266-51602-0166.fits", "bestobjid").object_id
    assert a == read_sdss_spectrum(DATA / "spec-0266-51630-0174.fits", "bestobjid").object_id


def test_table_schema_and_normalisation(table):
    assert table.num_rows == 8 and table["object_id"].to_numpy().dtype == np.int64
    flux, ivar = spectra_arrays(table)
    assert flux.shape == (8, 1000) and flux.dtype == np.float32
    for f, iv in zip(flux, ivar, strict=True):
        assert np.mean(f[iv > 0]) == pytest.approx(1.0, rel=1e-5)  # documented normalisation
        assert (f[iv == 0] == 0).all()
    assert (table["norm"].to_numpy() > 0).all()
    assert table.schema.field("norm").metadata[b"unit"] == NORM_UNIT.encode()
    assert table.schema.field("ra").metadata[b"unit"] == b"deg"
    assert np.array_equal(json.loads(table.schema.metadata[GRID_KEY])["wave_edges"], WAVE_EDGES)
    # only the spectra with bad-column halves lose much of the grid
    coverage = dict(zip(table["fiber"].to_pylist(), (ivar > 0).mean(axis=1), strict=True))
    assert coverage[526] == pytest.approx(0.43, abs=0.01) and coverage[174] == pytest.approx(0.528, abs=0.01)
    assert min(v for k, v in coverage.items() if k not in (526, 174)) > 0.88


def test_lines_land_at_their_rest_wavelengths(table):
    """[NII] 6585.27 A (vacuum) is the strongest line near H-alpha in fibers 166 (z=0.022) and
    614 (z=0.062): after the shift it must sit in the same grid bin for both."""
    flux, ivar = spectra_arrays(table)
    fibers = table["fiber"].to_pylist()
    window = (WAVE > 6540) & (WAVE < 6620)
    for fiber in (166, 614):
        k = fibers.index(fiber)
        peak = WAVE[window][np.argmax(np.where(ivar[k][window] > 0, flux[k][window], 0))]
        assert peak == pytest.approx(6585.27, abs=6.0)  # one bin is 5.9 A here


def test_repeat_observations_agree_within_their_noise(table):
    df = table.select(["fiber", "ra", "dec"]).to_pandas()
    flux, ivar = spectra_arrays(table)
    # the repeats are the same objects: matched by plug position
    for a, b in REPEATS:
        ra, rb = df[df.fiber == a].iloc[0], df[df.fiber == b].iloc[0]
        assert abs(ra.ra - rb.ra) * 3600 < 1 and abs(ra.dec - rb.dec) * 3600 < 1
    row = {f: i for i, f in enumerate(df.fiber)}
    chi = {}
    for a, b in itertools.combinations(df.fiber, 2):
        chi[(a, b)] = chi[(b, a)] = _chi2_dof(flux[row[a]], ivar[row[a]], flux[row[b]], ivar[row[b]])
    # measured: 1.20 (527 bins) and 0.78 (430 bins)
    for a, b in REPEATS:
        c, n = chi[(a, b)]
        assert n > 400 and 0.5 < c < 2.0
    # each repeat's best match among all 7 other spectra is its twin ...
    for a, b in REPEATS + [(b, a) for a, b in REPEATS]:
        others = {o: chi[(a, o)][0] for o in df.fiber if o != a}
        assert min(others, key=others.get) == b
    # ... and for the high-S/N pair every other galaxy is at least 4x worse (measured >= 5.05)
    assert min(chi[(166, o)][0] for o in df.fiber if o not in (166, 174)) > 4 * chi[(166, 174)][0]


def test_default_coverage_threshold_quarantines_the_half_masked_spectrum(tmp_path):
    out = tmp_path / "s.parquet"
    report = ingest_spectra([DATA], out)
    assert report.n_ingested == 7 and len(report.quarantined) == 1
    q = pd.read_csv(report.quarantine_file)
    assert list(q.columns) == ["path", "object_id", "reason"]
    assert q.path[0].endswith("spec-0266-51602-0526.fits")
    # the redshift is fine; masked pixels (a bad-column half) leave the grid short
    assert q.reason[0].endswith(
        "spec-0266-51602-0526.fits: 43% of the rest-frame grid has data (needs 50%): 52% of the pixels "
        "at observed 3478-8544 A are masked (and_mask set or ivar=0)"
    )
    assert read_spectra_table(out).num_rows == 7


def _edit_specobj(src: Path, dst: Path, **values) -> Path:
    with fits.open(src) as h:
        for k, v in values.items():
            h[2].data[k][0] = v
        h.writeto(dst)
    return dst


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    good = DATA / "spec-0266-51602-0166.fits"
    trunc = tmp / "spec-trunc.fits"
    trunc.write_bytes(good.read_bytes()[:100_000])
    text = tmp / "spec-text.fits"
    text.write_text("SIMPLE? no, this is a text file\n")
    return {
        "nan_z": _edit_specobj(good, tmp / "spec-nanz.fits", Z=np.nan, SPECOBJID="1"),
        "zero_z": _edit_specobj(good, tmp / "spec-zeroz.fits", Z=0.0, SPECOBJID="2"),
        "zwarning": _edit_specobj(good, tmp / "spec-zwarn.fits", ZWARNING=4, SPECOBJID="3"),
        "truncated": trunc,
        "text": text,
    }


def test_bad_spectra_are_quarantined_naming_the_file(tmp_path):
    bad = _bad_inputs(tmp_path)
    good = [DATA / "spec-0266-51602-0166.fits", DATA / "spec-0266-51630-0461.fits"]
    dup = good[0]  # the same spectrum twice: a duplicate object id
    report = ingest_spectra([*good, dup, *bad.values()], tmp_path / "out.parquet")
    assert report.n_ingested == 2
    reasons = {Path(q.path).name: q.reason for q in report.quarantined}
    assert len(report.quarantined) == 6
    assert "duplicate object id 299535031829817344" in reasons["spec-0266-51602-0166.fits"]
    assert reasons["spec-nanz.fits"].endswith("spec-nanz.fits: no redshift measured (Z=nan)")
    assert "spec-zeroz.fits: Z=0.00000 is no galaxy redshift (z <= 0" in reasons["spec-zeroz.fits"]
    assert reasons["spec-zwarn.fits"].endswith(
        "spec-zwarn.fits: ZWARNING=4 (SMALL_DELTA_CHI2: the best fit's reduced chi2 is within 0.01 of the "
        "next best's: an ambiguous z); pass --allow-zwarning to keep it"
    )
    assert "truncated FITS file" in reasons["spec-trunc.fits"]
    assert "not a readable FITS file" in reasons["spec-text.fits"]
    for name, reason in reasons.items():
        assert name in reason and "\n" not in reason
    # the zwarning one is kept on request
    report = ingest_spectra([bad["zwarning"]], tmp_path / "zw.parquet", allow_zwarning=True)
    assert report.n_ingested == 1


def test_single_bad_file_and_strict_raise_one_line_errors(tmp_path):
    bad = _bad_inputs(tmp_path)
    with pytest.raises(InputError, match=r"spec-nanz\.fits: no redshift measured"):
        ingest_spectra([bad["nan_z"]], tmp_path / "a.parquet")
    with pytest.raises(FormatError, match=r"spec-trunc\.fits: truncated"):
        ingest_spectra([DATA, bad["truncated"]], tmp_path / "b.parquet", strict=True, min_grid_coverage=0.4)
    assert not (tmp_path / "b.parquet").exists() and not (tmp_path / "b.parquet.quarantine.csv").exists()
    with pytest.raises(InputError, match="all 2 inputs were quarantined"):
        ingest_spectra([bad["text"], bad["zero_z"]], tmp_path / "c.parquet")
    assert not (tmp_path / "c.parquet").exists()
    assert (tmp_path / "c.parquet.quarantine.csv").exists()


def test_cli(tmp_path):
    bad = _bad_inputs(tmp_path)
    runner = CliRunner()
    out = tmp_path / "cli.parquet"
    r = runner.invoke(main, ["ingest-spectra", str(DATA), str(bad["nan_z"]), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "ingested 7 objects" in r.stdout and "quarantined 2" in r.stdout
    assert "spec-nanz.fits: no redshift measured (Z=nan)" in r.stderr
    r = runner.invoke(main, ["ingest-spectra", str(DATA), "-o", str(out)])
    assert r.exit_code == 2 and "already exists" in r.stderr
    r = runner.invoke(main, ["ingest-spectra", str(bad["nan_z"]), "-o", str(tmp_path / "x.parquet")])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[-1].startswith("galspec: error: ") and "spec-nanz.fits" in lines[-1]
    r = runner.invoke(
        main,
        [
            "ingest-spectra",
            str(DATA),
            str(bad["text"]),
            "-o",
            str(tmp_path / "y.parquet"),
            "--strict",
            "--min-coverage",
            "0.4",
        ],
    )
    assert r.exit_code == 1 and "spec-text.fits: not a readable FITS file" in r.stderr
    r = runner.invoke(
        main,
        [
            "ingest-spectra",
            str(DATA),
            "-o",
            str(tmp_path / "z.parquet"),
            "--min-coverage",
            "0.4",
            "--id-from",
            "plate-mjd-fiber",
        ],
    )
    assert r.exit_code == 0 and "ingested 8 objects" in r.stdout
    assert 266516020166 in read_spectra_table(tmp_path / "z.parquet")["object_id"].to_pylist()


def test_interrupted_run_leaves_no_output(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = sdss.prepare_spectrum

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sdss, "prepare_spectrum", flaky)
    out = tmp_path / "s.parquet"
    with pytest.raises(KeyboardInterrupt):
        ingest_spectra([DATA], out)
    assert list(tmp_path.iterdir()) == []
    # an existing output is never half-replaced
    shutil.copy(DATA / "README.md", out)
    with pytest.raises(FileExistsError):
        ingest_spectra([DATA], out)


def test_high_redshift_loses_the_red_end_then_is_quarantined(tmp_path):
    src = DATA / "spec-0266-51602-0166.fits"  # observed 3790-9190 A
    mid = _edit_specobj(src, tmp_path / "spec-z05.fits", Z=0.5, SPECOBJID="5")
    high = _edit_specobj(src, tmp_path / "spec-z09.fits", Z=0.9, SPECOBJID="9")
    report = ingest_spectra([mid, high], tmp_path / "z.parquet")
    assert report.n_ingested == 1
    assert report.quarantined[0].reason.endswith(
        "spec-z09.fits: z=0.9000 puts the rest-frame grid 3387-8321 A at observed 6435-15811 A, mostly "
        "outside the observed 3789-9186 A: 40% of the rest-frame grid has data (needs 50%)"
    )
    flux, ivar = spectra_arrays(read_spectra_table(tmp_path / "z.parquet"))
    red_end = 10 ** _loglam_max(src) / 1.5
    assert (ivar[0][WAVE > red_end + 5] == 0).all() and (ivar[0][WAVE < red_end - 5] > 0).mean() > 0.99


def _loglam_max(path: Path) -> float:
    with fits.open(path) as h:
        return float(h[1].data["loglam"][-1])


# -- BOSS/eBOSS layout and refusals in physical terms --------------------------------------------------


def _specobjid(plate: int, fiber: int, mjd: int, run2d: int = 26) -> int:
    """SDSS's SPECOBJID bits: plate 50-63, fiber 38-49, mjd - 50000 24-37, run2d 10-23."""
    return plate << 50 | fiber << 38 | (mjd - 50000) << 24 | run2d << 10


def _boss_layout(src: Path, dst: Path, plate: int, fiber_name: str = "FIBERID") -> Path:
    """``src`` laid out as a BOSS/eBOSS spec-lite file: the redshift row in HDU SPALL (the spAll
    copy) with SPECOBJID a 64-bit integer, unsigned (TZERO 2**63) once the plate reaches bit 63,
    instead of SDSS-I/II's string, and FIBERID under ``fiber_name`` (spAll-lite says FIBER)."""
    with fits.open(src) as h:
        row = h["SPECOBJ"].data
        fiber, mjd = int(row["FIBERID"][0]), int(row["MJD"][0])
        specobjid = _specobjid(plate, fiber, mjd)
        cols = []
        for c in h["SPECOBJ"].columns:
            if c.name == "SPECOBJID" and specobjid >= 2**63:
                value = np.array([specobjid], np.uint64)
                cols.append(fits.Column("SPECOBJID", "K", bzero=2**63, array=value))
            elif c.name == "SPECOBJID":
                cols.append(fits.Column("SPECOBJID", "K", array=np.array([specobjid], np.int64)))
            elif c.name == "PLATE":
                cols.append(fits.Column("PLATE", "J", array=[plate]))
            else:
                name = fiber_name if c.name == "FIBERID" else c.name
                cols.append(fits.Column(name, c.format, dim=c.dim, array=row[c.name]))
        spall = fits.BinTableHDU.from_columns(cols, name="SPALL")
        fits.HDUList([h[0].copy(), h["COADD"].copy(), spall]).writeto(dst)
    return dst


def test_boss_spall_files_ingest_to_the_same_spectrum(tmp_path):
    legacy = DATA / "spec-0266-51602-0166.fits"
    assert _specobjid(266, 166, 51602) == read_sdss_spectrum(legacy).object_id  # the bit layout is SDSS's
    eboss = _boss_layout(legacy, tmp_path / "spec-8500-51602-0166.fits", plate=8500)
    boss = _boss_layout(legacy, tmp_path / "spec-0266-51602-0166.fits", plate=266, fiber_name="FIBER")
    with fits.open(eboss) as h:
        assert [x.name for x in h] == ["PRIMARY", "COADD", "SPALL"] and "SPECOBJ" not in h
        assert h["SPALL"].data["SPECOBJID"].dtype == np.uint64
    ingest_spectra([legacy], tmp_path / "legacy.parquet")
    for path in (eboss, boss):
        report = ingest_spectra([path], tmp_path / f"{path.stem}.parquet")
        assert report.n_ingested == 1 and not report.quarantined
    ref = read_spectra_table(tmp_path / "legacy.parquet")
    a = read_spectra_table(tmp_path / "spec-8500-51602-0166.parquet")
    b = read_spectra_table(tmp_path / "spec-0266-51602-0166.parquet")
    for t in (a, b):
        for col in ("z", "ra", "dec", "norm", "mjd", "fiber"):
            assert t[col].to_pylist() == ref[col].to_pylist(), col
        for x, y in zip(spectra_arrays(t), spectra_arrays(ref), strict=True):
            np.testing.assert_array_equal(x, y)
    # eBOSS-era plate: SPECOBJID is past int64, so the id is plate-mjd-fiber
    assert a["object_id"].to_pylist() == [plate_mjd_fiber_id(8500, 51602, 166)] == [8500516020166]
    assert a["plate"].to_pylist() == [8500]
    assert b["object_id"].to_pylist() == ref["object_id"].to_pylist() == [299535031829817344]


def test_zwarning_bits_are_named():
    assert sdss.zwarning_text(1) == "SKY: a sky fibre, no object"
    text = sdss.zwarning_text(2**5 | 2**9 | 2**12)
    assert text == (
        "Z_FITLIMIT: the chi2 minimum is at the edge of the redshift range searched; "
        "NODATA: no data for this fibre (ivar = 0 everywhere); bit 12: not a documented flag"
    )


def test_class_redshift_and_flux_refusals_are_physical(tmp_path):
    good = DATA / "spec-0266-51602-0166.fits"
    star = _edit_specobj(good, tmp_path / "spec-star.fits", CLASS="STAR", SPECOBJID="11")
    qso = _edit_specobj(good, tmp_path / "spec-qso.fits", CLASS="QSO", SPECOBJID="12")
    unplugged = _edit_specobj(good, tmp_path / "spec-unpl.fits", ZWARNING=2**7 | 2**2, SPECOBJID="13")
    far = _edit_specobj(good, tmp_path / "spec-z3.fits", Z=3.0, SPECOBJID="14")
    dark = tmp_path / "spec-dark.fits"
    with fits.open(good) as h:
        h[1].data["flux"] = -np.abs(h[1].data["flux"])
        h.writeto(dark)
    report = ingest_spectra([star, qso, unplugged, far, dark, good], tmp_path / "s.parquet")
    assert report.n_ingested == 1
    r = {Path(q.path).name: q.reason for q in report.quarantined}
    assert r["spec-star.fits"] == f"{star}: CLASS=STAR (a star); pass --classes to keep it"
    assert r["spec-qso.fits"].endswith(
        "spec-qso.fits: CLASS=QSO (a quasar, its light dominated by the nucleus); pass --classes to keep it"
    )
    assert r["spec-unpl.fits"].endswith(
        "ZWARNING=132 (SMALL_DELTA_CHI2: the best fit's reduced chi2 is within 0.01 of the next best's: an "
        "ambiguous z; UNPLUGGED: the fibre was unplugged: no spectrum); pass --allow-zwarning to keep it"
    )
    assert r["spec-z3.fits"].endswith(
        "z=3.0000 puts the rest-frame grid 3387-8321 A at observed 13548-33286 A, outside the observed "
        "3789-9186 A: 0% of the rest-frame grid has data (needs 50%)"
    )
    assert r["spec-dark.fits"].endswith(
        "the flux at observed 3460-8501 A (the rest-frame grid at z=0.0216) does not average above zero: "
        "no continuum to normalise by"
    )
    # other classes on request
    report = ingest_spectra([star, qso], tmp_path / "t.parquet", classes=("GALAXY", "QSO", "STAR"))
    assert report.n_ingested == 2


def test_cli_boss_and_classes(tmp_path):
    eboss = _boss_layout(DATA / "spec-0266-51602-0166.fits", tmp_path / "spec-8500-51602-0166.fits", 8500)
    star = _edit_specobj(DATA / "spec-0266-51630-0461.fits", tmp_path / "spec-star.fits", CLASS="STAR")
    runner = CliRunner()
    r = runner.invoke(main, ["ingest-spectra", str(eboss), str(star), "-o", str(tmp_path / "a.parquet"),
                             "-q"])
    assert r.exit_code == 0, r.output
    assert "ingested 1 objects" in r.stdout and "quarantined 1" in r.stdout
    assert r.stderr == f"galspec: quarantined: {star}: CLASS=STAR (a star); pass --classes to keep it\n"
    r = runner.invoke(main, ["ingest-spectra", str(star), "-o", str(tmp_path / "b.parquet"), "-q"])
    assert r.exit_code == 1
    assert r.stderr == f"galspec: error: {star}: CLASS=STAR (a star); pass --classes to keep it\n"
    r = runner.invoke(main, ["ingest-spectra", str(eboss), str(star), "-o", str(tmp_path / "c.parquet"),
                             "--classes", "galaxy, star", "-q"])
    assert r.exit_code == 0 and "ingested 2 objects" in r.stdout, r.output
    r = runner.invoke(main, ["ingest-spectra", str(star), "-o", str(tmp_path / "d.parquet"),
                             "--classes", ","])
    assert r.exit_code == 2 and "galspec: error:" in r.stderr and "--classes" in r.stderr
