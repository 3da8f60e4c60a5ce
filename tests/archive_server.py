"""A local stand-in for the survey archives, on 127.0.0.1: it speaks the PS1 cutout service
(ps1filenames.py, fitscut.cgi), the Legacy Surveys viewer (fits-cutout) and the SDSS SAS (lite
spec files) from fixtures built here deterministically (and the real SDSS files in
tests/data/sdss_spectra), and misbehaves on purpose where a test tells it to.

Its URL layouts are written out here, not taken from the client, so that a client asking for the
wrong path is answered 404 and the test sees it. Every request is logged (time, target, status,
User-Agent, the fault served).
"""

from __future__ import annotations

import email.utils
import functools
import io
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from astropy.io import fits

SDSS_DIR = Path(__file__).parent / "data" / "sdss_spectra"
PS1_SCALE, LEGACY_SCALE = 0.25, 0.262
PS1_HEADER = "projcell subcell ra dec filter mjd type filename shortname badflag"
EXPTIME = 1000.0  # seconds, in the PS1 cutouts' headers
BOSS_SPEC = (7000, 56666, 12)  # a BOSS-era spectrum served at the eBOSS path (see boss_spectrum)
TRICKLE_SECONDS = 3.0
HTML_PAGE = (b"<!DOCTYPE html><html><head><title>503 Service Temporarily Unavailable</title></head>"
             b"<body><h1>Service Temporarily Unavailable</h1><p>Please try again later.</p></body></html>")


@dataclass(frozen=True)
class SkyObject:
    """An object the tests ask about: ``bands`` the archive has for it; none when outside the footprint."""

    object_id: int
    ra: float
    dec: float
    bands: str = "grizy"


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, served instead of the normal answer: ``status`` (an HTTP error, with
    ``arg`` the Retry-After: seconds, or "date+N" for an HTTP date N s ahead), ``slow`` (``arg``
    seconds before answering), ``truncate`` (half the body under the full Content-Length),
    ``html`` (an error page with status 200), ``band`` (the FITS of band ``arg``), ``shape``
    (a cutout of the wrong size), ``zeros`` (a Legacy cube of zeros: no data there), ``drop`` (the
    connection closed without an answer), ``trickle`` (a byte of the body every ``arg`` seconds, for
    TRICKLE_SECONDS at most, then the connection closed), ``bomb`` (a small tile-compressed FITS
    image of zeros, ``arg`` x ``arg`` pixels once decompressed)."""

    kind: str
    arg: object = None
    status: int = 200


@dataclass(frozen=True)
class Request:
    t: float
    target: str
    path: str
    status: int
    user_agent: str
    fault: str | None


def image(object_id: int, band: str, size: int) -> np.ndarray:
    """The object's pixels in one band: a Gaussian galaxy on unit noise, the same every time."""
    rng = np.random.default_rng([object_id, ord(band), size])
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    galaxy = (10 + 5 * "grizy".index(band)) * np.exp(-(xx**2 + yy**2) / (2 * (size / 8) ** 2))
    return (galaxy + rng.normal(0, 1, (size, size))).astype(np.float32)


def _wcs_header(ra: float, dec: float, size: int, scale: float) -> fits.Header:
    h = fits.Header()
    for k, v in (("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", ra), ("CRVAL2", dec),
                 ("CRPIX1", (size + 1) / 2), ("CRPIX2", (size + 1) / 2), ("CD1_1", -scale / 3600),
                 ("CD1_2", 0.0), ("CD2_1", 0.0), ("CD2_2", scale / 3600), ("RADESYS", "ICRS")):
        h[k] = v
    return h


def _fits_bytes(hdu: fits.PrimaryHDU) -> bytes:
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


@functools.lru_cache(maxsize=512)
def ps1_bytes(obj: SkyObject, band: str, size: int) -> bytes:
    """A fitscut.cgi FITS cutout: linear pixels, a TAN WCS at 0.25"/px, ``FPA.FILTER`` = "g.00000"."""
    header = _wcs_header(obj.ra, obj.dec, size, PS1_SCALE)
    header["HIERARCH FPA.FILTER"] = f"{band}.00000"
    header["EXPTIME"] = EXPTIME
    return _fits_bytes(fits.PrimaryHDU(image(obj.object_id, band, size), header))


@functools.lru_cache(maxsize=512)
def legacy_bytes(obj: SkyObject, bands: str, size: int, zeros: bool = False) -> bytes:
    """A fits-cutout cube: one plane per band in the order asked, ``BANDS``/``BANDn`` headers (all
    zeros with ``zeros``, as where the survey has no data)."""
    header = _wcs_header(obj.ra, obj.dec, size, LEGACY_SCALE)
    header["BANDS"] = bands
    for k, b in enumerate(bands):
        header[f"BAND{k}"] = b
    data = np.stack([image(obj.object_id, b, size) for b in bands]) if len(bands) > 1 else image(
        obj.object_id, bands, size)
    return _fits_bytes(fits.PrimaryHDU(np.zeros_like(data) if zeros else data, header))


@functools.lru_cache(maxsize=4)
def bomb_bytes(side: int) -> bytes:
    """A tile-compressed FITS image of zeros: a few kB that decompress to ``side``^2 float32 pixels."""
    buf = io.BytesIO()
    hdu = fits.CompImageHDU(np.zeros((side, side), np.float32), compression_type="GZIP_1")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def ps1_filename(obj: SkyObject, band: str) -> str:
    cell, sub = 1000 + obj.object_id % 1000, obj.object_id % 100
    cellname = f"rings.v3.skycell.{cell:04d}.{sub:03d}"
    return f"/rings.v3.skycell/{cell:04d}/{sub:03d}/{cellname}.stk.{band}.unconv.fits"


def specobjid(plate: int, mjd: int, fiber: int, run2d: int) -> int:
    """SDSS's SPECOBJID: plate, fiber, MJD - 50000 and run2d in bits 50, 38, 24 and 10."""
    return (plate << 50) + (fiber << 38) + ((mjd - 50000) << 24) + (run2d << 10)


@functools.cache
def renumbered_spectrum(source: str, plate: int, mjd: int, fiber: int, run2d: int = 26,
                        table: str = "SPECOBJ", at: tuple[float, float] | None = None) -> bytes:
    """A copy of the real SDSS file ``source`` under another plate, MJD and fiber (and the
    SPECOBJID they make), its catalog HDU named ``table``, moved to ``at`` (ra, dec) if given; the
    spectrum, its redshift and every other value stay the real ones."""
    buf = io.BytesIO()
    with fits.open(SDSS_DIR / source, memmap=False) as hdul:  # in memory: changed here, not on disk
        hdul[2].name = table
        row = {"PLATE": plate, "MJD": mjd, "FIBERID": fiber,
               "SPECOBJID": str(specobjid(plate, mjd, fiber, run2d))}
        if at is not None:
            row |= {"PLUG_RA": at[0], "PLUG_DEC": at[1]}
            hdul[0].header["PLUG_RA"], hdul[0].header["PLUG_DEC"] = at
        for col, value in row.items():
            hdul[2].data[col][0] = value
        hdul[0].header["PLATEID"], hdul[0].header["MJD"], hdul[0].header["FIBERID"] = plate, mjd, fiber
        hdul.writeto(buf)
    return buf.getvalue()


def boss_spectrum() -> bytes:
    """A BOSS-style lite file: the real SDSS-I spectrum spec-0266-51602-0001 whose catalog HDU is
    named SPALL (as BOSS and eBOSS files name it), renumbered to plate 7000, MJD 56666, fiber 12
    (run2d v5_13_2 in the SPECOBJID as 1302)."""
    return renumbered_spectrum("spec-0266-51602-0001.fits", *BOSS_SPEC, run2d=1302, table="SPALL")


def sas_files() -> dict[str, bytes]:
    """The SAS paths served: the real SDSS-I files at the run2d 26 layout, the BOSS one at v5_13_2."""
    files = {f"/sas/dr17/sdss/spectro/redux/26/spectra/lite/0266/{p.name}": p.read_bytes()
             for p in sorted(SDSS_DIR.glob("spec-*.fits"))}
    plate, mjd, fiber = BOSS_SPEC
    name = f"spec-{plate:04d}-{mjd:05d}-{fiber:04d}.fits"
    files[f"/sas/dr17/eboss/spectro/redux/v5_13_2/spectra/lite/{plate:04d}/{name}"] = boss_spectrum()
    return files


@dataclass
class Archive:
    """What the server holds and how it misbehaves: ``faults`` maps a target (``list:ID``,
    ``cutout:ID:BAND``, ``legacy:ID``, ``spec:NAME``) to the faults its next requests get, in order;
    ``delay`` slows every answer."""

    objects: list[SkyObject] = field(default_factory=list)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    delay: float = 0.0
    log: list[Request] = field(default_factory=list)
    sas: dict[str, bytes] = field(default_factory=sas_files)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def find(self, query: dict) -> SkyObject | None:
        try:
            ra, dec = float(query["ra"]), float(query["dec"])
        except (KeyError, ValueError):
            return None
        return next((o for o in self.objects if abs(o.ra - ra) < 1e-6 and abs(o.dec - dec) < 1e-6), None)

    def next_fault(self, target: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(target)
            return queue.pop(0) if queue else None

    def requests(self, prefix: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.log if r.target.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the archives do
    archive: Archive

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        target, body, ctype = self._route(url.path, query)
        fault = self.archive.next_fault(target) if body is not None else None
        status = 404 if body is None else fault.status if fault else 200
        with self.archive.lock:
            self.archive.log.append(Request(time.monotonic(), target, self.path, status,
                                            self.headers.get("User-Agent", ""), fault and fault.kind))
        if self.archive.delay:
            time.sleep(self.archive.delay)
        try:
            self._answer(body, ctype, fault, query)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first (a timeout)
            self.close_connection = True

    def _route(self, path: str, q: dict) -> tuple[str, bytes | None, str]:
        obj = self.archive.find(q)
        oid = obj.object_id if obj else "?"
        if path == "/cgi-bin/ps1filenames.py":
            if q.get("type") != "stack" or not q.get("filters"):
                return f"list:{oid}", None, ""
            rows = [PS1_HEADER] + [
                f"{1000 + o.object_id % 1000} {o.object_id % 100} {o.ra} {o.dec} {b} 0.0 stack "
                f"{ps1_filename(o, b)} {ps1_filename(o, b).rsplit('/', 1)[1]} 0"
                for o in ([obj] if obj else []) for b in q["filters"] if b in o.bands]
            return f"list:{oid}", ("\n".join(rows) + "\n").encode(), "text/plain"
        if path == "/cgi-bin/fitscut.cgi":
            found = [(o, b) for o in self.archive.objects for b in o.bands
                     if ps1_filename(o, b) == q.get("red")]
            if not found or found[0][0] is not obj or q.get("format") != "fits":
                return f"cutout:{oid}:?", None, ""
            o, band = found[0]
            return f"cutout:{oid}:{band}", ps1_bytes(o, band, int(q["size"])), "image/fits"
        if path == "/viewer/fits-cutout":
            ok = bool(obj and obj.bands) and q.get("layer") == "ls-dr10" and q.get("pixscale") == "0.262"
            body = legacy_bytes(obj, q["bands"], int(q["size"])) if ok else None
            return f"legacy:{oid}", body, "image/fits"
        name = path.rsplit("/", 1)[-1]
        return f"spec:{name}", self.archive.sas.get(path), "application/fits"

    def _answer(self, body: bytes | None, ctype: str, fault: Fault | None, q: dict) -> None:
        kind = fault.kind if fault else None
        if kind == "slow":
            time.sleep(float(fault.arg))
        if kind == "drop":
            self.close_connection = True
            return
        headers = {}
        if body is None:
            status, body, ctype = 404, b"<html><title>404 Not Found</title></html>", "text/html"
        elif kind == "status":
            status, body, ctype = fault.status, b"<html><title>busy</title></html>", "text/html"
            if fault.arg is not None:
                arg = str(fault.arg)
                headers["Retry-After"] = (email.utils.formatdate(time.time() + float(arg[5:]), usegmt=True)
                                          if arg.startswith("date+") else arg)
        else:
            status = 200
            if kind == "html":
                body, ctype = HTML_PAGE, "text/html"
            elif kind == "band":
                o = self.archive.find(q)
                body = ps1_bytes(o, str(fault.arg), int(q["size"]))
            elif kind == "bomb":
                body = bomb_bytes(int(fault.arg))
            elif kind == "zeros":
                body = legacy_bytes(self.archive.find(q), q["bands"], int(q["size"]), zeros=True)
            elif kind == "shape":
                o = self.archive.find(q)
                body = ps1_bytes(o, q["red"].split(".stk.")[1][0], int(q["size"]) + 2)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if kind == "trickle":
            end = time.monotonic() + TRICKLE_SECONDS
            for k in range(len(body)):
                if time.monotonic() > end:
                    break
                self.wfile.write(body[k:k + 1])
                self.wfile.flush()
                time.sleep(float(fault.arg))
            self.close_connection = True
            return
        if kind == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that hung up is no error here
        pass


class ArchiveServer:
    """The archive served on 127.0.0.1 (by default a free port) from a thread; ``url`` is its root."""

    def __init__(self, archive: Archive, port: int = 0) -> None:
        self.archive = archive
        handler = type("Handler", (_Handler,), {"archive": archive})
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """Serve a mock archive on 127.0.0.1 for measurements (catalogs/archives.md): ``--objects`` PS1
    and Legacy objects (2% outside the footprint, 2% without a y band) and the SDSS files, with a
    fault on a ``--fault-rate`` share of the cutouts and spectra, each fault served once; writes
    the catalogs, prints the root URL, and on SIGINT/SIGTERM what it served."""
    import argparse
    import csv
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--fault-rate", type=float, default=0.02)
    parser.add_argument("--slow", type=float, default=3.0, help="seconds a slow answer takes")
    parser.add_argument("--catalog", required=True, help="write the objects' CSV here")
    parser.add_argument("--spectra-catalog", help="write the spectra's CSV here")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    menu = [Fault("status", 1, 429), Fault("status", None, 500), Fault("status", "date+2", 503),
            Fault("slow", args.slow), Fault("truncate"), Fault("html"), Fault("drop")]
    objects = []
    for k in range(args.objects):
        u = rng.uniform()
        bands = "" if u < 0.02 else "griz" if u < 0.04 else "grizy"
        objects.append(SkyObject(10**6 + k, float(rng.uniform(0, 360)), float(rng.uniform(-20, 60)), bands))
    targets = [f"cutout:{o.object_id}:{b}" for o in objects for b in o.bands]
    targets += [f"legacy:{o.object_id}" for o in objects if o.bands]
    targets += [f"spec:{p.name}" for p in SDSS_DIR.glob("spec-*.fits")]
    faults = {t: [menu[int(rng.integers(len(menu)))]] for t in targets if rng.uniform() < args.fault_rate}
    with open(args.catalog, "w", newline="") as fh:
        csv.writer(fh).writerows([("object_id", "ra", "dec")] + [(o.object_id, o.ra, o.dec) for o in objects])
    if args.spectra_catalog:
        with open(args.spectra_catalog, "w", newline="") as fh:
            rows = [p.stem.split("-")[1:] for p in sorted(SDSS_DIR.glob("spec-*.fits"))]
            csv.writer(fh).writerows([("plate", "mjd", "fiberid"), *rows, BOSS_SPEC, (266, 51602, 999)])
    archive = Archive(objects, faults)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    with ArchiveServer(archive, port=args.port) as server:
        print(server.url, f"({len(faults)} faults set)", flush=True)
        stopped.wait()
    served = {}
    for r in archive.log:
        served[r.fault or str(r.status)] = served.get(r.fault or str(r.status), 0) + 1
    print(f"served {len(archive.log)} requests: {served}", flush=True)


if __name__ == "__main__":
    main()
