"""The archive clients against a real HTTP server on 127.0.0.1 (tests/archive_server.py) that speaks
the PS1, Legacy Surveys and SDSS SAS protocols and misbehaves on purpose. No test touches the
internet, and none mocks HTTP."""

from __future__ import annotations

import csv
import json
import math
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from archive_server import (
    BOSS_SPEC,
    EXPTIME,
    SDSS_DIR,
    Archive,
    ArchiveServer,
    Fault,
    SkyObject,
    boss_spectrum,
    image,
    legacy_bytes,
    ps1_bytes,
)
from click.testing import CliRunner

from galspec_batch import __version__
from galspec_batch import defaults as D
from galspec_batch.archive import CutoutRequest, HttpSettings, download_cutouts, download_spectra, legacy, ps1
from galspec_batch.archive.cutouts import SURVEYS, cache_folder
from galspec_batch.archive.http import RateLimiter, parse_retry_after, user_agent
from galspec_batch.archive.manifest import MANIFEST_NAME, Manifest
from galspec_batch.archive.sdss import spectrum_key
from galspec_batch.cli import main
from galspec_batch.errors import UsageError
from galspec_batch.ingest.quarantine import quarantine_path
from galspec_batch.store import open_store

SIZE = 32
FAST = {"concurrency": 4, "rate": 500.0, "timeout": 0.5, "retries": 3, "backoff": 0.02}
PS1_OBJECTS = [
    SkyObject(101, 150.1, 2.2), SkyObject(102, 150.2, 2.3), SkyObject(103, 150.3, 2.1),
    SkyObject(104, 150.15, 2.25), SkyObject(105, 150.25, 2.05),
    SkyObject(106, 151.0, -35.0, bands=""),  # outside the footprint: an empty file list
    SkyObject(107, 150.05, 2.15, bands="griz"),  # no y-band stack there
]
PS1_FAULTS = {
    "cutout:101:g": [Fault("status", 1, 429)],  # Retry-After: 1 (seconds)
    "cutout:102:r": [Fault("status", None, 500), Fault("status", "date+2", 503)],  # then an HTTP date
    "cutout:103:i": [Fault("slow", 1.0)],  # past the client's 0.5 s timeout
    "cutout:104:z": [Fault("truncate")],  # half the body under the full Content-Length
    "list:105": [Fault("html")],  # an HTML error page with status 200
    "cutout:102:y": [Fault("band", "r")],  # the r-band FITS when y was asked for
    "cutout:105:g": [Fault("drop")],  # the connection closed without an answer
    "cutout:107:g": [Fault("shape")],  # 34 x 34 when 32 x 32 was asked for
}


def _http(**kw) -> HttpSettings:
    return HttpSettings(**{**FAST, **kw})


def _catalog(path: Path, objects: list[SkyObject]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object_id", "ra", "dec"])
        w.writerows([o.object_id, o.ra, o.dec] for o in objects)
    return path


def _manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / MANIFEST_NAME).read_text().splitlines()]


def _quarantine(output: Path) -> list[dict]:
    with open(quarantine_path(output), newline="") as fh:
        return list(csv.DictReader(fh))


def _after(log, target: str, status: int) -> float:
    """Seconds from the request of ``target`` answered ``status`` to its next request."""
    mine = [r for r in log if r.target == target]
    k = next(i for i, r in enumerate(mine) if r.status == status)
    return mine[k + 1].t - mine[k].t


def test_ps1_download_survives_every_fault_and_reruns_fetch_nothing(tmp_path):
    archive = Archive(PS1_OBJECTS, {k: list(v) for k, v in PS1_FAULTS.items()})
    out = tmp_path / "ps1.zarr"
    cat = _catalog(tmp_path / "objects.csv", PS1_OBJECTS)
    with ArchiveServer(archive) as server:
        request = CutoutRequest(survey="ps1", size=SIZE, base_url=server.url)
        report = download_cutouts(cat, out, request=request, http=_http())
        log = archive.requests()

        # every fault was retried once more per fault, and nothing else was asked twice
        counts = Counter(r.target for r in log)
        assert {t: n for t, n in counts.items() if n > 1} == {t: 1 + len(f) for t, f in PS1_FAULTS.items()}
        n_faults = sum(len(f) for f in PS1_FAULTS.values())
        assert report.retries == n_faults == 9
        assert report.requests == len(log) == 7 + 29 + 9  # 7 file lists, 29 cutouts, 9 retries
        assert sum(r.status == 200 and r.fault is None for r in log) == 36
        assert (report.n_asked, report.n_complete, report.downloaded, report.reused) == (7, 6, 29, 0)
        assert report.ingested == 6 and report.missing_bands == 1
        # Retry-After honoured: 1 s as seconds, about 1-2 s as an HTTP date (whole seconds)
        assert _after(log, "cutout:101:g", 429) >= 1.0
        assert _after(log, "cutout:102:r", 503) >= 0.95
        assert {r.user_agent for r in log} == {user_agent()}
        assert user_agent().startswith(f"galspec-batch/{__version__} (")

        # the files are the archive's bytes; the object outside the footprint is quarantined with why
        folder = cache_folder(out)
        for obj in PS1_OBJECTS:
            for band in "grizy":
                f = folder / "ps1" / f"{SIZE}px" / f"{obj.object_id:03d}" / f"{obj.object_id}_{band}.fits"
                assert f.exists() == (band in obj.bands)
                if f.exists():
                    assert f.read_bytes() == ps1_bytes(obj, band, SIZE)
        rows = _quarantine(out)
        assert [(r["object_id"], "outside the PS1 footprint" in r["reason"]) for r in rows] == [("106", True)]
        kinds = Counter(e["kind"] for e in _manifest(folder))
        assert kinds == {"list": 6, "absent": 1, "file": 29}

        # the store holds the six objects with the fixtures' pixels, y masked where PS1 has none
        store = open_store(out)
        batch = store.read(slice(None))
        assert sorted(batch.object_id) == [101, 102, 103, 104, 105, 107]
        assert store.bands == tuple("grizy") and store.survey == "ps1"
        assert abs(store.pixel_scale - 0.25) < 1e-6
        # ingest puts PS1 pixels at AB 25 in every band: counts per second of the header's EXPTIME
        assert store.attrs.zero_points == dict.fromkeys("grizy", 25.0)
        per_second = np.float32(10.0 ** (0.4 * (25.0 - (25.0 + 2.5 * math.log10(EXPTIME)))))
        for oid, img, mask in zip(batch.object_id, batch.images, batch.mask, strict=True):
            obj = next(o for o in PS1_OBJECTS if o.object_id == oid)
            assert list(mask) == [b in obj.bands for b in "grizy"]
            for band in obj.bands:
                np.testing.assert_allclose(img["grizy".index(band)], image(oid, band, SIZE) * per_second,
                                           rtol=1e-6)

        # a rerun asks the archive nothing and builds the same store from the cache
        again = download_cutouts(cat, out, request=request, http=_http(), overwrite=True)
        assert len(archive.requests()) == len(log)
        assert (again.requests, again.downloaded, again.reused, again.ingested) == (0, 0, 29, 6)
        assert [q.object_id for q in again.quarantined] == [106]
        np.testing.assert_array_equal(open_store(out).read(slice(None)).images, batch.images)

        # a file damaged in place (same size) and a file lost: exactly those two are fetched again
        damaged = folder / "ps1" / f"{SIZE}px" / "101" / "101_r.fits"
        data = bytearray(damaged.read_bytes())
        data[-1] ^= 0xFF
        damaged.write_bytes(bytes(data))
        (folder / "ps1" / f"{SIZE}px" / "104" / "104_y.fits").unlink()
        third = download_cutouts(cat, out, request=request, http=_http(), overwrite=True)
        new = archive.requests()[len(log):]
        assert sorted(r.target for r in new) == ["cutout:101:r", "cutout:104:y"]
        assert (third.downloaded, third.reused) == (2, 27)
        assert damaged.read_bytes() == ps1_bytes(PS1_OBJECTS[0], "r", SIZE)


def test_rate_limit_is_shared_by_all_workers(tmp_path):
    objects = [SkyObject(301 + k, 20.0 + k / 10, 5.0) for k in range(2)]
    archive = Archive(objects)
    with ArchiveServer(archive) as server:
        download_cutouts(_catalog(tmp_path / "c.csv", objects), tmp_path / "s.zarr",
                         request=CutoutRequest(size=16, base_url=server.url), http=_http(rate=20.0))
    t = sorted(r.t for r in archive.requests())
    assert len(t) == 12
    # four workers, one budget: no more than 20 a second over the run, nor over any five requests
    # (less a scheduling delay; unlimited, five requests take a few milliseconds here)
    assert (len(t) - 1) / (t[-1] - t[0]) <= 20 * 1.05
    assert min(t[i + 5] - t[i] for i in range(len(t) - 5)) >= 5 / 20 - 0.1


def test_interrupted_run_resumes_with_only_the_missing_files(tmp_path):
    objects = [SkyObject(401 + k, 30.0 + k / 10, 10.0) for k in range(12)]
    archive = Archive(objects, delay=0.05)
    cat, out = _catalog(tmp_path / "c.csv", objects), tmp_path / "s.zarr"
    with ArchiveServer(archive) as server:
        args = [sys.executable, "-m", "galspec_batch.cli", "download", "cutouts", "--catalog", str(cat),
                "-o", str(out), "--size", "16", "--base-url", server.url, "--concurrency", "2",
                "--rate", "500", "--quiet"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while len(archive.requests("cutout:")) < 20 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        asked = len(archive.requests("cutout:"))
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 143, err
        assert err.strip().splitlines()[-1] == "galspec: error: interrupted; rerun the same command to resume"
        assert not out.exists()
        folder = cache_folder(out)
        assert not [p for p in folder.rglob("*") if p.name.startswith(".part-")]
        entries = {e["key"]: e for e in _manifest(folder)}
        have = sum(e["kind"] == "file" for e in entries.values())
        lists = sum(e["kind"] == "list" for e in entries.values())
        # what was answered before the signal is kept; at most the two requests in flight are lost
        assert asked - 2 <= have <= len(archive.requests("cutout:")) < 60 and lists <= 12

        archive.delay, seen = 0.0, len(archive.requests())
        report = download_cutouts(cat, out, request=CutoutRequest(size=16, base_url=server.url), http=_http())
        new = archive.requests()[seen:]
        assert sum(r.target.startswith("cutout:") for r in new) == 60 - have == report.downloaded
        assert sum(r.target.startswith("list:") for r in new) == 12 - lists
        assert report.reused == have and report.ingested == 12
    assert sorted(open_store(out).object_id) == [o.object_id for o in objects]


def test_legacy_cubes_into_a_store(tmp_path):
    objects = [SkyObject(201, 40.0, 1.0), SkyObject(202, 40.1, 1.1), SkyObject(203, 41.0, 80.0, bands=""),
               SkyObject(204, 40.2, 1.2)]
    archive = Archive(objects, {"legacy:201": [Fault("status", "0", 503)], "legacy:204": [Fault("zeros")]})
    cat = _catalog(tmp_path / "c.csv", objects)
    with ArchiveServer(archive) as server:
        out = tmp_path / "ls.zarr"
        request = CutoutRequest("legacy", 24, base_url=server.url)
        report = download_cutouts(cat, out, request=request, http=_http())
        assert (report.requests, report.retries, report.ingested) == (5, 1, 2)
        url_203 = server.url + legacy.cutout_key(41.0, 80.0, 24, tuple("griz"))
        assert [(x.object_id, x.reason) for x in report.quarantined] == [
            (203, f"not in the archive: HTTP 404 for {url_203}"),
            (204, "outside the Legacy Surveys footprint: every pixel of the cutout is 0")]
        for obj in objects[:2]:
            cube = cache_folder(out) / "legacy" / "24px" / f"{obj.object_id:03d}" / f"{obj.object_id}.fits"
            assert cube.read_bytes() == legacy_bytes(obj, "griz", 24)
        store = open_store(out)
        assert store.bands == tuple("griz") and abs(store.pixel_scale - 0.262) < 1e-6
        batch = store.read(slice(None))
        for oid, img in zip(batch.object_id, batch.images, strict=True):
            np.testing.assert_array_equal(img, np.stack([image(oid, b, 24) for b in "griz"]))
        assert download_cutouts(cat, out, request=request, http=_http(), overwrite=True).requests == 0

        # one band: a 2-d image, ingested as that band
        one = download_cutouts(cat, tmp_path / "r.zarr", http=_http(),
                               request=CutoutRequest("legacy", 24, ("r",), server.url))
        r_store = open_store(tmp_path / "r.zarr")
        assert one.requests == 4 and r_store.bands == ("r",)
        first = r_store.read([0])
        np.testing.assert_array_equal(first.images[0, 0], image(int(first.object_id[0]), "r", 24))


def _spec_catalog(path: Path) -> Path:
    real = sorted(SDSS_DIR.glob("spec-*.fits"))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["plate", "mjd", "fiberID", "run2d"])
        for k, p in enumerate(real):
            plate, mjd, fiber = (int(x) for x in p.stem.split("-")[1:])
            w.writerow([plate, mjd, fiber, "26" if k % 2 else ""])  # no run2d: the plate number decides
        w.writerow([*BOSS_SPEC, ""])
        w.writerow([266, 51602, 999, "26"])  # not in the archive
        w.writerow(["abc", 51602, 1, ""])  # not a plate
        w.writerow([266, 51602, 1, "26"])  # listed twice: fetched once
    return path


def test_sdss_spectra_by_plate_mjd_fiber(tmp_path):
    faults = {"spec:spec-0266-51602-0001.fits": [Fault("truncate")],
              "spec:spec-0266-51602-0162.fits": [Fault("html")],
              "spec:spec-0266-51630-0174.fits": [Fault("status", "0", 429)],
              "spec:spec-7000-56666-0012.fits": [Fault("drop")]}
    archive = Archive(faults=faults)
    out = tmp_path / "spectra"
    cat = _spec_catalog(tmp_path / "specobj.csv")
    with ArchiveServer(archive) as server:
        report = download_spectra(cat, out, http=_http(), base_url=server.url)
        log = archive.requests()
        assert (report.n_asked, report.n_complete, report.downloaded) == (11, 9, 9)
        assert (report.requests, report.retries) == (10 + 4, 4) and len(log) == 14
        assert all(r.status == 200 or r.fault or r.target == "spec:spec-0266-51602-0999.fits" for r in log)
        boss = [r.path for r in log if r.target == "spec:spec-7000-56666-0012.fits"][-1]
        assert boss == "/sas/dr17/eboss/spectro/redux/v5_13_2/spectra/lite/7000/spec-7000-56666-0012.fits"
        for p in SDSS_DIR.glob("spec-*.fits"):
            assert (out / p.name).read_bytes() == p.read_bytes()
        assert (out / "spec-7000-56666-0012.fits").read_bytes() == boss_spectrum()
        reasons = [r["reason"] for r in _quarantine(out)]
        assert len(reasons) == 2 and any("HTTP 404" in r and "0999" in r for r in reasons)
        assert any("is not an SDSS spectrum" in r for r in reasons)
        assert report.next_step == f"galspec ingest-spectra {out} -o {tmp_path / 'spectra.parquet'}"

        assert download_spectra(cat, out, http=_http(), base_url=server.url).requests == 0
        (out / "spec-0266-51630-0461.fits").unlink()
        again = download_spectra(cat, out, http=_http(), base_url=server.url)
        assert [r.target for r in archive.requests()[len(log):]] == ["spec:spec-0266-51630-0461.fits"]
        assert (again.downloaded, again.reused) == (1, 8)

    from galspec_batch.ingest import ingest_spectra

    # every file downloaded is a spectrum ingest reads (the BOSS one through its SPALL HDU); the one
    # it leaves out is refused for a physical reason, not for its format
    table = ingest_spectra([out], tmp_path / "spectra.parquet")
    assert table.n_ingested == 8
    assert [(Path(q.path).name, "rest-frame grid" in q.reason) for q in table.quarantined] == [
        ("spec-0266-51602-0526.fits", True)]


def test_layouts_retry_after_and_settings():
    sdss = "/sas/dr17/sdss/spectro/redux"
    assert spectrum_key(266, 51602, 1) == f"{sdss}/26/spectra/lite/0266/spec-0266-51602-0001.fits"
    assert spectrum_key(2900, 54000, 7, "104") == f"{sdss}/104/spectra/lite/2900/spec-2900-54000-0007.fits"
    assert spectrum_key(10235, 58127, 6) == ("/sas/dr17/eboss/spectro/redux/v5_13_2/spectra/lite/10235/"
                                             "spec-10235-58127-0006.fits")
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412478.0) == 2.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert tuple(SURVEYS) == D.CUTOUT_SURVEYS
    with pytest.raises(UsageError, match="--rate"):
        HttpSettings(rate=0)
    with pytest.raises(UsageError, match="--bands"):
        CutoutRequest(bands=("g", "q"))
    with pytest.raises(UsageError, match="--size"):
        CutoutRequest(survey="legacy", size=600)
    with pytest.raises(UsageError, match="--base-url"):
        CutoutRequest(base_url="ftp://mirror.example.org")
    limiter, stop = RateLimiter(50.0), threading.Event()
    start = time.monotonic()
    for _ in range(6):
        limiter.acquire(stop)
    assert time.monotonic() - start >= 5 / 50 - 0.01


def test_command_line(tmp_path):
    objects = [SkyObject(501, 60.0, 3.0), SkyObject(502, 60.1, 3.1)]
    cat = _catalog(tmp_path / "c.csv", objects)
    archive = Archive(objects)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, ["download", *args], catch_exceptions=False)

    with ArchiveServer(archive) as server:
        base = ["cutouts", "--catalog", str(cat), "-o", str(tmp_path / "s.zarr"), "--base-url", server.url,
                "--size", "16", "--backoff", "0.01", "--rate", "500", "-q"]
        r = run(*base, "--contact", "astro@example.org")
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("ps1: 2 of 2 objects complete (10 files downloaded, 0 already here); "
                                   "12 requests, 0 retries, ")
        assert f"ingested 2 into {tmp_path / 's.zarr'}" in r.stdout
        assert {x.user_agent for x in archive.requests()} == {user_agent("astro@example.org")}
        assert user_agent("astro@example.org").endswith("; +astro@example.org)")

        for bad in (["--survey", "sdss"], ["--concurrency", "0"], ["--rate", "0"], ["--bands", "gq"],
                    ["--base-url", "ftp://x"], ["--size", "4"], ["--survey", "legacy", "--size", "1000"],
                    ["--bands", "gg"], ["--contact", "a\tb"]):
            r = run(*base, "--overwrite", *bad)
            assert r.exit_code == 2 and r.stderr.startswith("galspec: error: "), (bad, r.stderr)
        r = run(*base)  # the store exists
        assert r.exit_code == 2 and "already exists (pass --overwrite" in r.stderr
        r = run("cutouts", "--catalog", str(tmp_path / "none.csv"), "-o", str(tmp_path / "t.zarr"))
        assert r.exit_code == 1
        assert r.stderr.strip() == f"galspec: error: catalog {tmp_path / 'none.csv'} does not exist"
        (tmp_path / "nora.csv").write_text("object_id,dec\n1,2\n")
        r = run("cutouts", "--catalog", str(tmp_path / "nora.csv"), "-o", str(tmp_path / "t.zarr"))
        assert r.exit_code == 1 and "lacks columns ['ra']" in r.stderr
        assert not (tmp_path / "t.zarr").exists() and not (tmp_path / "t.zarr.download").exists()

        spec_cat = tmp_path / "s.csv"
        spec_cat.write_text("plate,mjd,fiberid\n266,51602,1\n")
        sp = tmp_path / "sp"
        r = run("spectra", "--catalog", str(spec_cat), "-o", str(sp), "--base-url", server.url, "-q")
        assert r.exit_code == 0, r.output
        assert "sdss: 1 of 1 spectra complete" in r.stdout
        assert r.stdout.strip().endswith(f"next: galspec ingest-spectra {sp} -o {tmp_path / 'sp.parquet'}")
        for bad in (["-o", str(sp), "--retries", "-1"], ["-o", str(spec_cat)]):  # the second: a file
            r = run("spectra", "--catalog", str(spec_cat), *bad)
            assert r.exit_code == 2 and r.stderr.startswith("galspec: error: "), (bad, r.stderr)


def test_a_long_retry_after_stops_the_run_and_the_rerun_resumes(tmp_path):
    objects = [SkyObject(601 + k, 70.0 + k / 10, 4.0) for k in range(8)]
    # the fifth object's file list: 429 with a Retry-After past retry_after_max (600 s)
    archive = Archive(objects, {"list:605": [Fault("status", 3600, 429)]})
    cat, out = _catalog(tmp_path / "c.csv", objects), tmp_path / "s.zarr"
    with ArchiveServer(archive) as server:
        args = ["download", "cutouts", "--catalog", str(cat), "-o", str(out), "--size", "16", "--base-url",
                server.url, "--rate", "50", "--backoff", "0.01", "-q"]
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        log = archive.requests()
        busy = next(k for k, x in enumerate(log) if x.status == 429)
        kept = sum(e["kind"] == "file" for e in _manifest(cache_folder(out)))
        url = server.url + ps1.filelist_key(objects[4].ra, objects[4].dec, tuple("grizy"))
        assert r.exit_code == 1
        assert r.stderr == (f"galspec: error: the archive asks us to wait 3600 s (Retry-After) on {url}; "
                            f"rerun later; the {kept} files already fetched are kept and will not be fetched "
                            "again\n")
        # every worker stopped at once (at 50 a second, at most a request already on its way), and
        # nothing was built from the few objects fetched: no store, no quarantine list
        assert len(log) - busy - 1 <= 2
        assert 0 < kept <= sum(x.target.startswith("cutout:") and x.status == 200 for x in log)
        assert not out.exists() and not quarantine_path(out).exists()

        report = download_cutouts(cat, out, request=CutoutRequest(size=16, base_url=server.url), http=_http())
        assert (report.reused, report.downloaded, report.ingested) == (kept, 40 - kept, 8)


def test_retry_after_holds_every_worker_even_on_the_last_try(tmp_path):
    objects = [SkyObject(701 + k, 80.0 + k / 10, 6.0) for k in range(4)]
    archive = Archive(objects, {"cutout:701:g": [Fault("status", "0.4", 503)]})
    with ArchiveServer(archive) as server:
        report = download_cutouts(_catalog(tmp_path / "c.csv", objects), tmp_path / "s.zarr",
                                  request=CutoutRequest(size=16, base_url=server.url), http=_http(retries=0))
    assert [q.object_id for q in report.quarantined] == [701]
    log = archive.requests()
    t0 = next(x.t for x in log if x.status == 503)
    later = [x.t - t0 for x in log if x.t > t0]
    # past what was already on its way, no worker asks again until the 0.4 s are over
    assert max(later) >= 0.4 and not [d for d in later if 0.05 < d < 0.35]


def test_an_answer_trickled_in_is_cut_at_the_request_deadline(tmp_path):
    objects = [SkyObject(801, 90.0, 7.0)]
    # a byte every 0.05 s: each read is well within the 0.2 s timeout, the whole never is
    archive = Archive(objects, {"cutout:801:r": [Fault("trickle", 0.05)]})
    with ArchiveServer(archive) as server:
        report = download_cutouts(_catalog(tmp_path / "c.csv", objects), tmp_path / "s.zarr",
                                  request=CutoutRequest(size=16, base_url=server.url),
                                  http=_http(timeout=0.2, deadline=0.4))
    assert (report.retries, report.downloaded, report.ingested) == (1, 5, 1)
    # cut at 0.4 s from the client's start (not at a 0.2 s timeout), long before the 3 s of trickle
    assert 0.3 <= _after(archive.requests(), "cutout:801:r", 200) < 2.0
    assert HttpSettings(timeout=7).deadline == 7 * D.DOWNLOAD_DEADLINE_TIMEOUTS


def test_a_decompression_bomb_is_refused_from_its_headers(tmp_path):
    objects = [SkyObject(901, 100.0, 8.0), SkyObject(902, 100.1, 8.1)]
    # a few kB that decompress to 1024 x 1024 float32 pixels (4 MiB), when 16 x 16 were asked for
    archive = Archive(objects, {"cutout:901:g": [Fault("bomb", 1024)] * 2})
    with ArchiveServer(archive) as server:
        report = download_cutouts(_catalog(tmp_path / "c.csv", objects), tmp_path / "s.zarr",
                                  request=CutoutRequest(size=16, base_url=server.url),
                                  http=_http(retries=1, timeout=5))  # the server compresses it first
    [(oid, reason)] = [(q.object_id, q.reason) for q in report.quarantined]
    assert oid == 901 and reason.count("bad answer: its HDUs declare 4194304 bytes of data, more than the "
                                       f"{2 * 8 * 16 * 16 + (1 << 20)} expected") == 2


def test_manifest_line_left_unended_or_written_short(tmp_path):
    path = tmp_path / MANIFEST_NAME
    with Manifest(tmp_path) as m:
        m.add_absent("/a", "gone")
    with open(path, "ab") as fh:  # a run killed mid-line
        fh.write(b'{"kind": "absent", "key": "/b", "rea')
    with Manifest(tmp_path) as m:
        assert set(m.entries) == {"/a"}
        m.add_absent("/c", "gone too")
    with open(path, "ab") as fh:  # killed between a whole line and its newline
        fh.write(json.dumps({"kind": "absent", "key": "/d", "reason": "gone", "time": "t"}).encode())
    with Manifest(tmp_path) as m:
        assert set(m.entries) == {"/a", "/c", "/d"}
        # a full disk: os.write writes part of the line and says so only in its count
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 10, hard))
        try:
            with pytest.raises(OSError, match="File too large"):
                m.add_absent("/e", "lost to a full disk")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old_handler)
        assert "/e" not in m.entries
        m.add_absent("/f", "after the disk was freed")
    with Manifest(tmp_path) as m:
        assert set(m.entries) == {"/a", "/c", "/d", "/f"}
    assert path.read_bytes().endswith(b"\n")
