"""The whole real-data path as a survey team runs it, through the real command line (the ``galspec``
entry point, in-process) against the local archive of tests/archive_server.py: a CSV of SDSS
objects -> PS1 cutouts -> SDSS spectra -> spectra table -> VAE -> labels -> CNN -> catalog. No test
touches the internet, and nothing is mocked.

The archive serves the eight real SDSS spectra of tests/data/sdss_spectra, the BOSS-layout copy of
one of them, and two copies of each real file renumbered to made-up MJDs of plate 266 (51901,
51902: the plate was observed on 51602 and 51630 only) at positions 2 and 4 degrees north of the
original; a copy keeps the real file's spectrum, redshift and every other value. The copies are
there because a VAE needs 18 spectra (``spectral_vae.min_vae_spectra``) and the real files give 7
usable ones. The PS1 cutouts are the server's synthetic galaxies at the positions of the CSV.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from archive_server import (
    BOSS_SPEC,
    SDSS_DIR,
    Archive,
    ArchiveServer,
    SkyObject,
    renumbered_spectrum,
    sas_files,
    specobjid,
)
from astropy.io import fits
from click.testing import CliRunner

from galspec_batch.atomic import file_sha256
from galspec_batch.catalog import read_catalog, read_provenance
from galspec_batch.cli import main
from galspec_batch.errors import InputError
from galspec_batch.spectra_table import read_spectra_table, spectra_arrays
from galspec_batch.spectral_vae import VAESettings, fit_vae, min_vae_spectra
from galspec_batch.store import open_store

SIZE = 32
COPY_MJDS = (51901, 51902)  # made-up MJDs of plate 266 for the renumbered copies
MISSING = (266, 51901, 999)  # listed in the CSV, not in the archive
SAS = "/sas/dr17/sdss/spectro/redux/26/spectra/lite/0266/"
POLITE_TO_A_TEST_SERVER = ["--rate", "500", "--backoff", "0.01"]
LATENTS = [f"latent_{i}" for i in range(1, 7)]


def _sdss_objects() -> tuple[list[dict], dict[str, bytes]]:
    """The CSV rows (object_id = SPECOBJID, ra/dec = PLUG_RA/PLUG_DEC, plate, mjd, fiberid, as a
    SpecObj query gives them) and the renumbered copies the archive serves beside the real files."""
    rows, served = [], {}
    for path in sorted(SDSS_DIR.glob("spec-*.fits")):
        with fits.open(path) as hdul:
            t = hdul[2].data[0]
            ra, dec, plate, mjd, fiber = (float(t["PLUG_RA"]), float(t["PLUG_DEC"]), int(t["PLATE"]),
                                          int(t["MJD"]), int(t["FIBERID"]))
            rows.append(dict(object_id=int(t["SPECOBJID"]), ra=ra, dec=dec, plate=plate, mjd=mjd,
                             fiberid=fiber))
        for k, copy_mjd in enumerate(COPY_MJDS, 1):
            at = (ra, dec + 2.0 * k)
            served[SAS + f"spec-{plate:04d}-{copy_mjd:05d}-{fiber:04d}.fits"] = renumbered_spectrum(
                path.name, plate, copy_mjd, fiber, at=at)
            rows.append(dict(object_id=specobjid(plate, copy_mjd, fiber, 26), ra=at[0], dec=at[1],
                             plate=plate, mjd=copy_mjd, fiberid=fiber))
    first = rows[0]  # the BOSS copy is of the first file: the same galaxy
    rows.append(dict(object_id=specobjid(*BOSS_SPEC, 1302), ra=first["ra"], dec=first["dec"],
                     plate=BOSS_SPEC[0], mjd=BOSS_SPEC[1], fiberid=BOSS_SPEC[2]))
    rows.append(dict(object_id=specobjid(*MISSING, 26), ra=150.0, dec=1.0, plate=MISSING[0], mjd=MISSING[1],
                     fiberid=MISSING[2]))
    return rows, served


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _name(row: dict) -> str:
    return f"spec-{row['plate']:04d}-{row['mjd']:05d}-{row['fiberid']:04d}.fits"


def test_csv_of_sdss_objects_to_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("GALSPEC_ENGINE_CACHE", str(tmp_path / "engines"))  # predict's --engine auto choice
    rows, served = _sdss_objects()
    objects_csv = _write_csv(tmp_path / "objects.csv", rows)
    sky = [SkyObject(r["object_id"], r["ra"], r["dec"]) for r in rows]
    archive = Archive(sky, sas={**sas_files(), **served})
    runner = CliRunner()
    seconds: dict[str, float] = {}

    def galspec(*args: object) -> str:
        start = time.perf_counter()
        r = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        seconds[" ".join(str(a) for a in args[:2] if not str(a).startswith(("-", "/")))] = (
            time.perf_counter() - start)
        assert r.exit_code == 0, (args, r.output)
        return r.stdout

    store, spectra, table = tmp_path / "survey.zarr", tmp_path / "spectra", tmp_path / "spectra.parquet"
    vae, labels, run, catalog = (tmp_path / n for n in ("vae", "labels.parquet", "run", "catalog"))
    with ArchiveServer(archive) as server:
        out = galspec("download", "cutouts", "--survey", "ps1", "--catalog", objects_csv, "-o", store,
                      "--size", SIZE, "--base-url", server.url, *POLITE_TO_A_TEST_SERVER, "-q")
        assert out.startswith("ps1: 26 of 26 objects complete (130 files downloaded, 0 already here)")
        out = galspec("download", "spectra", "--catalog", objects_csv, "-o", spectra,
                      "--base-url", server.url, *POLITE_TO_A_TEST_SERVER, "-q")
        assert out.startswith("sdss: 25 of 26 spectra complete")
        assert f"next: galspec ingest-spectra {spectra} -o {table}" in out
    galspec("ingest-spectra", spectra, "-o", table, "-q")
    galspec("vae", "train", "--spectra", table, "-o", vae, "--epochs", 3, "-q")
    galspec("vae", "encode", "--vae", vae, "--spectra", table, "-o", labels)
    out = galspec("train", "--model", "simple-cnn", "--store", store, "--labels", labels, "--epochs", 2,
                  "-o", run, "-q")
    assert "UNCALIBRATED: 4 validation objects are too few to calibrate on (need 20)" in out
    galspec("predict", "--store", store, "--checkpoint", run / "best", "-o", catalog, "--mc-samples", 8, "-q")
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()}, f"{sum(seconds.values()):.1f} in all")

    # cutouts: every object of the CSV is in the store, at its CSV position
    by_id = {r["object_id"]: r for r in rows}
    s = open_store(store)
    assert sorted(s.object_id) == sorted(by_id) and (s.survey, s.image_shape) == ("ps1", (SIZE, SIZE))
    for oid, ra, dec in zip(s.object_id, s.ra, s.dec, strict=True):
        assert (ra, dec) == pytest.approx((by_id[oid]["ra"], by_id[oid]["dec"]), abs=1e-9)

    # spectra: the archive's bytes for all but the one it lacks; ingest refuses one galaxy (and its
    # copies) for a physical reason
    here = {p.name: p for p in spectra.glob("spec-*.fits")}
    assert set(here) == {_name(r) for r in rows if r["fiberid"] != MISSING[2]}
    sas = archive.sas
    assert all(any(sas[k] == here[n].read_bytes() for k in sas if k.endswith(n)) for n in here)
    with open(f"{table}.quarantine.csv", newline="") as fh:
        refused = {Path(q["path"]).name: q["reason"] for q in csv.DictReader(fh)}
    assert sorted(refused) == [f"spec-0266-{m}-0526.fits" for m in (51602, *COPY_MJDS)]
    assert all("of the rest-frame grid has data (needs 50%)" in why for why in refused.values())

    # labels: exactly the downloaded objects with a usable spectrum, each with its own file's redshift
    usable = {r["object_id"]: _name(r) for r in rows if _name(r) in here and _name(r) not in refused}
    lab = pq.read_table(labels).to_pydict()
    assert sorted(lab["object_id"]) == sorted(usable) and len(usable) == 22
    for oid, z in zip(lab["object_id"], lab["z"], strict=True):
        with fits.open(here[usable[oid]]) as hdul:
            assert z == pytest.approx(float(hdul[2].data["Z"][0]), rel=1e-6)
    # and each spectrum lies where the store's cutout of the same object_id lies
    spec = pq.read_table(table, columns=["object_id", "ra", "dec"]).to_pydict()
    where = dict(zip(s.object_id, zip(s.ra, s.dec, strict=True), strict=True))
    for oid, ra, dec in zip(spec["object_id"], spec["ra"], spec["dec"], strict=True):
        assert (ra, dec) == pytest.approx(where[oid], abs=1e-9)
    split = pq.read_table(run / "best" / "training-split.parquet").to_pydict()
    assert sorted(split["object_id"]) == sorted(usable) and split["split"].count("validation") == 4

    # the catalog: one row per store object, finite latents and z_phot with their spreads
    cat = read_catalog(catalog).to_pydict()
    assert sorted(cat["object_id"]) == sorted(s.object_id)
    for col in [*LATENTS, "z_phot"]:
        assert np.isfinite(cat[col]).all() and (np.asarray(cat[f"{col}_std"]) > 0).all(), col
    assert set(cat["quality_flags"]) == {0} and set(cat["mc_samples"]) == {8}

    # provenance: the checkpoint's weights, config, labels and store, uncalibrated and saying so
    prov = read_provenance(catalog)["provenance"]
    best = run / "best"
    assert prov["model"]["checkpoint"] == str(best.resolve())
    assert prov["model"]["hash"] == file_sha256(best / "model.safetensors")
    assert set(cat["model_id"]) == {prov["model"]["id"]}
    config = json.loads((best / "config.json").read_text())
    assert prov["model"]["config"] == config
    assert config["data"]["labels_sha256"] == file_sha256(labels) and config["data"]["n_train"] == 18
    assert config["data"]["store_fingerprint"] == prov["store"]["fingerprint"] == s.fingerprint()
    assert prov["calibrated"] is False and prov["calibration"] is None


def test_vae_train_names_the_least_number_of_spectra(tmp_path):
    """The real files alone give 7 usable spectra: the refusal names the true minimum, 18 (it said
    17, and 17 are refused too), and 18 train."""
    runner = CliRunner()
    table = tmp_path / "spectra.parquet"
    r = runner.invoke(main, ["ingest-spectra", str(SDSS_DIR), "-o", str(table), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["vae", "train", "--spectra", str(table), "-o", str(tmp_path / "vae"), "-q"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "galspec: error: 7 spectra are too few to train a VAE (need at least 18)"
    assert min_vae_spectra() == 18 and min_vae_spectra(VAESettings(batch_size=8)) == 8

    flux, ivar = spectra_arrays(read_spectra_table(table))
    more = np.resize(np.arange(len(flux)), 18)  # the real spectra repeated
    with pytest.raises(InputError, match="17 spectra are too few to train a VAE \\(need at least 18\\)"):
        fit_vae(flux[more[:17]], ivar[more[:17]], settings=VAESettings(epochs=1))
    assert fit_vae(flux[more], ivar[more], settings=VAESettings(epochs=1)).meta["n_train"] == 16
