"""FITS cutout ingest with the real HSC grizy cube in tests/data/hsc_images."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from click.testing import CliRunner

from galspec_batch.cli import main
from galspec_batch.columns import QualityFlag
from galspec_batch.errors import FormatError, InputError
from galspec_batch.ingest import cutouts
from galspec_batch.ingest.cutouts import (
    crop_or_pad,
    find_objects,
    ingest_cutouts,
    object_id_from_name,
    parse_bands,
)
from galspec_batch.store import open_store

HSC = Path(__file__).parent / "data" / "hsc_images" / "hsc_cut.fits"
GRIZY = ("g", "r", "i", "z", "y")


@pytest.fixture(scope="module")
def cube():
    with fits.open(HSC) as h:
        return h[0].data.astype(np.float32), h[0].header.copy()


def _sky_header(header, **extra) -> fits.Header:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        out = WCS(header, naxis=2).to_header()
    for k, v in extra.items():
        out[k] = v
    return out


def _write_bands(cube, folder: Path, stem: str, sep: str = "_", bands=GRIZY, filters=False) -> list[Path]:
    """One 2-d file per band, as PS1 cutouts come."""
    data, header = cube
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for b in bands:
        extra = {"FILTER": f"HSC-{b.upper()}"} if filters else {}
        p = folder / f"{stem}{sep}{b}.fits"
        fits.PrimaryHDU(data[GRIZY.index(b)], _sky_header(header, **extra)).writeto(p)
        paths.append(p)
    return paths


def test_hsc_cube(tmp_path, cube):
    data, header = cube
    report = ingest_cutouts([HSC], tmp_path / "s.zarr", cube_bands=GRIZY)
    assert report.n_ingested == 1 and not report.quarantined and report.quarantine_file is None
    s = open_store(tmp_path / "s.zarr")
    assert s.bands == GRIZY and s.image_shape == (54, 54) and s.n_objects == 1
    assert s.pixel_scale == pytest.approx(0.168, abs=1e-6)
    np.testing.assert_array_equal(s.read(slice(0, 1)).images[0], data)
    assert s.mask.all() and s.flags[0] == 0
    # RA/Dec: the WCS at the centre pixel (27.5, 27.5 in FITS 1-based pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        ra, dec = WCS(header, naxis=2).all_pix2world(27.5, 27.5, 1)
    assert (s.ra[0], s.dec[0]) == pytest.approx((float(ra), float(dec)), abs=1e-9)
    assert (s.ra[0], s.dec[0]) == pytest.approx((150.2407, 2.0652), abs=1e-3)  # COSMOS
    assert s.object_id[0] == object_id_from_name("hsc_cut") == 4981842024150405457


def test_cube_band_order_is_put_right(tmp_path, cube):
    data, header = cube
    order = ("y", "z", "i", "r", "g")  # how the original PS1 pipeline stacked them
    flipped = data[[GRIZY.index(b) for b in order]]
    fits.PrimaryHDU(flipped, header).writeto(tmp_path / "by_option.fits")
    h2 = header.copy()
    h2["BANDS"] = "y,z,i,r,g"
    fits.PrimaryHDU(flipped, h2).writeto(tmp_path / "by_header.fits")
    report = ingest_cutouts([tmp_path / "by_option.fits"], tmp_path / "a.zarr", cube_bands=order)
    assert report.n_ingested == 1
    np.testing.assert_array_equal(open_store(tmp_path / "a.zarr").read([0]).images[0], data)
    # header band names win over the option
    ingest_cutouts([tmp_path / "by_header.fits"], tmp_path / "b.zarr", cube_bands=GRIZY)
    np.testing.assert_array_equal(open_store(tmp_path / "b.zarr").read([0]).images[0], data)
    # without either: a one-line error that says what to pass
    with pytest.raises(InputError, match=r"by_option\.fits: a cube of 5 planes .* pass --bands"):
        ingest_cutouts([tmp_path / "by_option.fits"], tmp_path / "c.zarr")


@pytest.mark.parametrize("sep", ["_", "."])
def test_one_file_per_band_with_a_missing_band_and_nan_pixels(tmp_path, cube, sep):
    data, _ = cube
    folder = tmp_path / "in"
    _write_bands(cube, folder, "123456789012", sep, bands=("y", "r", "g", "i"), filters=True)  # no z
    with fits.open(folder / f"123456789012{sep}r.fits", mode="update") as h:
        h[0].data[3, 4] = np.nan
    report = ingest_cutouts([folder], tmp_path / "s.zarr")
    assert report.n_ingested == 1
    s = open_store(tmp_path / "s.zarr")
    assert s.object_id[0] == 123456789012  # an integer file stem is the id (PS1 objids)
    img = s.read([0]).images[0]
    np.testing.assert_array_equal(s.mask[0], [True, True, True, False, True])
    assert (img[3] == 0).all()
    for b in ("g", "i", "y"):
        np.testing.assert_array_equal(img[GRIZY.index(b)], data[GRIZY.index(b)])
    assert np.isnan(img[1, 3, 4]) and np.isnan(img[1]).sum() == 1  # kept, not filled
    assert s.flags[0] == QualityFlag.NAN_PIXELS | QualityFlag.MISSING_BAND


def test_grouping_by_name():
    names = ["7_g.fits", "7_r.fits", "x.g.unconv.fits", "x.r.unconv.fits", "cube.fits"]
    objects = find_objects([Path("/d") / n for n in names])
    assert [(o.name, sorted(o.files), o.cube is not None) for o in objects] == [
        ("7", ["g", "r"], False),
        ("x", ["g", "r"], False),
        ("cube", [], True),
    ]
    assert parse_bands("g, r i") == ("g", "r", "i") and parse_bands("grizy") == GRIZY
    with pytest.raises(InputError):
        parse_bands("gg")


def test_catalog_csv_layouts(tmp_path, cube):
    data, _ = cube
    _write_bands(cube, tmp_path / "f", "a")
    pd.DataFrame(
        {"object_id": [11], "ra": [10.5], "dec": [-3.25], **{f"file_{b}": [f"f/a_{b}.fits"] for b in GRIZY}}
    ).to_csv(tmp_path / "wide.csv", index=False)
    ingest_cutouts(catalog=tmp_path / "wide.csv", output=tmp_path / "w.zarr")
    s = open_store(tmp_path / "w.zarr")
    assert s.object_id.tolist() == [11] and (s.ra[0], s.dec[0]) == (10.5, -3.25)
    np.testing.assert_array_equal(s.read([0]).images[0], data)
    # long layout: one row per band file, no ra/dec (from the WCS)
    rows = [{"object_id": 12, "band": b, "file": str(tmp_path / f"f/a_{b}.fits")} for b in ("z", "g")]
    pd.DataFrame(rows).to_csv(tmp_path / "long.csv", index=False)
    ingest_cutouts(catalog=tmp_path / "long.csv", output=tmp_path / "l.zarr")
    s = open_store(tmp_path / "l.zarr")
    assert s.object_id.tolist() == [12] and s.mask[0].tolist() == [True, False, False, True, False]
    assert s.ra[0] == pytest.approx(150.2407, abs=1e-3)
    # a listed file that is not there, and an id that is not an integer: quarantined by line
    rows = [{"object_id": 13, "file": "f/nothere.fits"}, {"object_id": "x1", "file": "f/a_g.fits"}]
    pd.DataFrame(rows).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"all 2 inputs .*nothere\.fits does not exist"):
        ingest_cutouts(catalog=tmp_path / "bad.csv", output=tmp_path / "b.zarr")
    q = pd.read_csv(tmp_path / "b.zarr.quarantine.csv")
    assert "bad.csv line 3: object_id 'x1' is not an int64" in q.reason[1]


def test_crop_and_pad(tmp_path, cube):
    data, _ = cube
    np.testing.assert_array_equal(crop_or_pad(data, (32, 31)), data[:, 11:43, 11:42])
    padded = crop_or_pad(data, (60, 60))
    np.testing.assert_array_equal(padded[:, 3:57, 3:57], data)
    assert np.isnan(padded[:, :3]).all() and np.isnan(padded).sum() == 5 * (60 * 60 - 54 * 54)
    ingest_cutouts([HSC], tmp_path / "p.zarr", cube_bands=GRIZY, image_size=(60, 60))
    s = open_store(tmp_path / "p.zarr")
    assert s.image_shape == (60, 60) and s.flags[0] == QualityFlag.NAN_PIXELS


def _bad_folder(tmp_path: Path, cube) -> Path:
    data, header = cube
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(HSC, folder / "good.fits")
    (folder / "trunc.fits").write_bytes(HSC.read_bytes()[:50_000])
    (folder / "text.fits").write_text("not a FITS file\n")
    _write_bands(cube, folder, "mix", bands=("g",))
    fits.PrimaryHDU(data[1, :50, :50], _sky_header(header)).writeto(folder / "mix_r.fits")
    fits.PrimaryHDU(data[:, :40, :40], header).writeto(folder / "small.fits")
    (folder / "dup").mkdir()
    shutil.copy(HSC, folder / "dup" / "good.fits")  # same stem: the same hashed object id
    return folder


def test_bad_inputs_are_quarantined_and_the_rest_goes_on(tmp_path, cube):
    folder = _bad_folder(tmp_path, cube)
    inputs = [folder / "good.fits", folder, folder / "dup" / "good.fits"]
    report = ingest_cutouts(inputs, tmp_path / "s.zarr", cube_bands=GRIZY)
    assert report.n_ingested == 1 and open_store(tmp_path / "s.zarr").n_objects == 1
    q = pd.read_csv(report.quarantine_file)
    assert report.quarantine_file == tmp_path / "s.zarr.quarantine.csv"
    names = [Path(p.split(";")[0]).relative_to(folder).as_posix() for p in q.path]
    reason = dict(zip(names, q.reason, strict=True))
    assert len(q) == len(reason) == 5, reason  # good.fits, named twice, counts once
    assert "trunc.fits: truncated FITS file" in reason["trunc.fits"]
    assert "text.fits: not a readable FITS file" in reason["text.fits"]
    assert "object mix: bands differ in shape: g 54x54" in reason["mix_g.fits"]
    assert "r 50x50" in reason["mix_g.fits"]
    assert "(40, 40) differs from the store's (54, 54)" in reason["small.fits"]
    assert f"dup/good.fits: duplicate object id {object_id_from_name('good')}" in reason["dup/good.fits"]
    assert str(folder / "good.fits") in reason["dup/good.fits"]
    assert all("\n" not in r for r in q.reason)


def test_strict_and_nothing_ingested_are_errors(tmp_path, cube):
    folder = _bad_folder(tmp_path, cube)
    with pytest.raises(FormatError, match=r"trunc\.fits: truncated"):
        ingest_cutouts(
            [folder / "good.fits", folder / "trunc.fits"], tmp_path / "a.zarr", strict=True, cube_bands=GRIZY
        )
    assert not (tmp_path / "a.zarr").exists()
    with pytest.raises(InputError, match=r"all 2 inputs were quarantined \(first: .*text\.fits"):
        ingest_cutouts([folder / "text.fits", folder / "trunc.fits"], tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists() and (tmp_path / "b.zarr.quarantine.csv").exists()


def test_cli(tmp_path, cube):
    folder = _bad_folder(tmp_path, cube)
    runner = CliRunner()
    out = tmp_path / "cli.zarr"
    r = runner.invoke(main, ["ingest", str(folder), "-o", str(out), "--bands", "grizy"])
    assert r.exit_code == 0, r.output
    assert "ingested 1 objects" in r.stdout and "quarantined 4" in r.stdout
    assert "galspec: quarantined: " in r.stderr and "text.fits: not a readable FITS file" in r.stderr
    r = runner.invoke(main, ["ingest", str(folder / "text.fits"), "-o", str(tmp_path / "t.zarr")])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "text.fits" in r.stderr
    assert r.stderr.startswith("galspec: error: ")
    r = runner.invoke(
        main, ["ingest", str(folder), "-o", str(tmp_path / "x.zarr"), "--bands", "grizy", "--strict"]
    )
    assert r.exit_code == 1 and "galspec: error: " in r.stderr
    r = runner.invoke(
        main,
        [
            "ingest",
            str(HSC),
            "-o",
            str(tmp_path / "c.zarr"),
            "--bands",
            "grizy",
            "--image-size",
            "32",
            "--survey",
            "hsc",
            "--zero-point",
            "27",
        ],
    )
    assert r.exit_code == 0, r.output
    s = open_store(tmp_path / "c.zarr")
    assert s.image_shape == (32, 32) and s.survey == "hsc"
    assert s.attrs.zero_points == dict.fromkeys(GRIZY, 27.0)


def test_interrupted_run_leaves_no_store(tmp_path, cube, monkeypatch):
    for k in range(3):
        _write_bands(cube, tmp_path / "in", str(k))
    real, calls = cutouts.load_object, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cutouts, "load_object", flaky)
    with pytest.raises(KeyboardInterrupt):
        ingest_cutouts([tmp_path / "in"], tmp_path / "s.zarr", batch_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
