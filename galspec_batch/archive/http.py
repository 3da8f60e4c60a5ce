"""HTTP for the archive clients: one pool of kept-alive connections (urllib3, thread-safe), a
token-bucket rate limit shared by every worker, retries with exponential backoff and jitter that
honour a server's Retry-After, and answers streamed into a temporary file that is checked and
renamed into place only when it is whole and right.

What is retried: HTTP 408, 425, 429, 500, 502, 503 and 504, timeouts, refused or dropped
connections, answers not whole by the request's deadline (a server that trickles bytes), and
answers with status 200 that fail their check (:class:`BadBody`: truncated, an HTML error page,
the wrong band or shape). What is not: 404 and 410 (:class:`Absent`: the archive does not have
it) and any other status (:class:`FetchFailed` at once). A Retry-After longer than
``retry_after_max`` stops the whole run (:class:`ArchiveBusy`).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import hashlib
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import urllib3

from galspec_batch import __version__
from galspec_batch import defaults as D
from galspec_batch.errors import GalspecError, UsageError

T = TypeVar("T")

PART_PREFIX = ".part-"  # a download under way: hidden, so no glob for FITS or spec-* names finds it
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
ABSENT_STATUSES = frozenset({404, 410})
MAX_CONCURRENCY = 64
MAX_TEXT_BYTES = 1 << 20  # a file list, not a file
MAX_REDIRECTS = 5
_CHUNK = 1 << 16
_DELAY_SECONDS = re.compile(r"\d{1,9}(\.\d+)?")


class Absent(GalspecError, LookupError):
    """The archive does not have it: HTTP 404/410, or an answer that says so (an empty file list)."""


class FetchFailed(GalspecError, RuntimeError):
    """A request that failed for good: its retries ran out, or a status that is not retried."""


class ArchiveBusy(GalspecError, RuntimeError):
    """The archive asks for a longer wait than ``retry_after_max``: the whole run stops (the pool
    stops every worker), to be rerun later; the message names ``kept``, the files already fetched,
    when it is known."""

    def __init__(self, url: str, seconds: float, kept: int | None = None) -> None:
        self.url, self.seconds = url, seconds
        text = f"the archive asks us to wait {seconds:.0f} s (Retry-After) on {url}; rerun later"
        if kept == 1:
            text += "; the 1 file already fetched is kept and will not be fetched again"
        elif kept is not None:
            text += f"; the {kept} files already fetched are kept and will not be fetched again"
        super().__init__(text)


class BadBody(Exception):
    """An answer with status 200 that is not what was asked for; retried like a server error."""


class Cancelled(Exception):
    """The run is stopping (Ctrl-C, SIGTERM): drop the request."""


@dataclass(frozen=True)
class HttpSettings:
    """How politely and how hard to ask: workers, rate, timeouts, retries and their backoff.
    ``deadline``: seconds a whole answer may take from its request (None: DOWNLOAD_DEADLINE_TIMEOUTS
    timeouts), however steadily its bytes trickle in."""

    concurrency: int = D.DOWNLOAD_CONCURRENCY
    rate: float = D.DOWNLOAD_RATE
    timeout: float = D.DOWNLOAD_TIMEOUT
    retries: int = D.DOWNLOAD_RETRIES
    backoff: float = D.DOWNLOAD_BACKOFF
    backoff_max: float = D.DOWNLOAD_BACKOFF_MAX
    retry_after_max: float = D.DOWNLOAD_RETRY_AFTER_MAX
    max_bytes: int = D.DOWNLOAD_MAX_BYTES
    contact: str | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        checks = (
            (1 <= self.concurrency <= MAX_CONCURRENCY, "--concurrency", f"1 to {MAX_CONCURRENCY}",
             self.concurrency),
            (0 < self.rate <= 1000, "--rate", "requests per second, > 0 and <= 1000", self.rate),
            (0 < self.timeout <= 3600, "--timeout", "seconds, > 0 and <= 3600", self.timeout),
            (0 <= self.retries <= 100, "--retries", "0 to 100", self.retries),
            (0 <= self.backoff <= self.backoff_max, "backoff", f"0 to backoff_max ({self.backoff_max})",
             self.backoff),
            (self.retry_after_max >= 0, "retry_after_max", ">= 0", self.retry_after_max),
            (self.max_bytes > 0, "max_bytes", "> 0", self.max_bytes),
            (self.deadline is None or self.deadline > 0, "deadline", "seconds, > 0", self.deadline),
        )
        for ok, name, expected, value in checks:
            if not ok:
                raise UsageError(f"{name} must be {expected}, got {value}")
        if self.contact is not None and not re.fullmatch(r"[\x21-\x7e][\x20-\x7e]{0,199}", self.contact):
            raise UsageError(f"--contact must be printable ASCII, at most 200 characters, "
                             f"got {self.contact!r}")
        if self.deadline is None:
            object.__setattr__(self, "deadline", D.DOWNLOAD_DEADLINE_TIMEOUTS * self.timeout)


def user_agent(contact: str | None = None) -> str:
    """``galspec-batch/<version> (survey-archive client; python-urllib3/<version>[; +contact])``."""
    return D.USER_AGENT.format(version=__version__, urllib3=urllib3.__version__,
                               contact=f"; +{contact}" if contact else "")


def check_base_url(url: str) -> str:
    """An http(s) root URL without its trailing slash; UsageError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(f"--base-url must be an http:// or https:// root URL (no query), got {url!r}")
    return url.rstrip("/")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RateLimiter:
    """A token bucket of one token, refilled ``rate`` times a second and shared by every worker: the
    requests leave at most ``rate`` a second, evenly spaced, however many workers wait.
    :meth:`hold` keeps them all back until a time (a server's Retry-After)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()
        self._hold = 0.0
        self._lock = threading.Lock()

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._hold = max(self._hold, time.monotonic() + seconds)

    def acquire(self, stop: threading.Event) -> None:
        """Wait for this request's slot; Cancelled if ``stop`` is set meanwhile."""
        while True:
            with self._lock:
                now = time.monotonic()
                slot = max(self._next, now, self._hold)
                self._next = slot + self._interval
            if slot > now and stop.wait(slot - now):
                raise Cancelled
            if stop.is_set():
                raise Cancelled
            with self._lock:
                if time.monotonic() >= self._hold:  # else a hold came meanwhile: take a later slot
                    return


@dataclass(frozen=True)
class FileRecord:
    """A file as downloaded: its size and sha256."""

    size: int
    sha256: str


class Stats:
    """Counts of one run, shared by the workers: requests sent, retries among them, bytes received."""

    def __init__(self) -> None:
        self.requests = self.retries = self.bytes = 0
        self._lock = threading.Lock()

    def add(self, requests: int = 0, retries: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.bytes += nbytes


class Fetcher:
    """GETs with the settings' rate limit, retries and checks; safe to share between threads."""

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        self.stop = threading.Event()  # set: drop every request at the next chance
        self.stats = Stats()
        self.user_agent = user_agent(settings.contact)
        self._limiter = RateLimiter(settings.rate)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self._pool = urllib3.PoolManager(
            maxsize=settings.concurrency,
            headers={"User-Agent": self.user_agent},
            timeout=urllib3.Timeout(connect=settings.timeout, read=settings.timeout),
            # retries are ours (with the rate limit and Retry-After); urllib3 only follows redirects
            retries=urllib3.Retry(total=None, connect=0, read=0, other=0, status=0, redirect=MAX_REDIRECTS),
        )

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._pool.clear()  # close the kept-alive connections

    def get_bytes(self, url: str, parse: Callable[[bytes], T]) -> T:
        """A small answer (at most 1 MiB) held in memory and parsed by ``parse`` (BadBody: retried)."""

        def consume(resp: urllib3.BaseHTTPResponse, deadline: Deadline) -> T:
            body = resp.read(MAX_TEXT_BYTES + 1)
            self.stats.add(nbytes=len(body))
            deadline.check()
            if len(body) > MAX_TEXT_BYTES:
                raise BadBody(f"more than {MAX_TEXT_BYTES} bytes")
            _check_length(resp, len(body))
            return parse(body)

        return self._get(url, consume)

    def get_file(self, url: str, dest: Path, check: Callable[[Path], None]) -> FileRecord:
        """Stream the answer into a temporary file beside ``dest``, ``check`` it (BadBody: retried;
        Absent: the archive has no data), then rename it to ``dest``."""

        def consume(resp: urllib3.BaseHTTPResponse, deadline: Deadline) -> FileRecord:
            tmp = dest.with_name(f"{PART_PREFIX}{uuid.uuid4().hex[:8]}-{dest.name}")
            digest, size = hashlib.sha256(), 0
            try:
                with open(tmp, "wb") as fh:
                    for chunk in resp.stream(_CHUNK):
                        if self.stop.is_set():
                            raise Cancelled
                        size += len(chunk)
                        self.stats.add(nbytes=len(chunk))
                        if size > self.settings.max_bytes:
                            raise BadBody(f"more than {self.settings.max_bytes} bytes")
                        digest.update(chunk)
                        fh.write(chunk)
                deadline.check()
                _check_length(resp, size)
                check(tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            return FileRecord(size, digest.hexdigest())

        dest.parent.mkdir(parents=True, exist_ok=True)
        return self._get(url, consume)

    def _get(self, url: str, consume: Callable[[urllib3.BaseHTTPResponse, Deadline], T]) -> T:
        s = self.settings
        problems: list[str] = []
        for attempt in range(s.retries + 1):
            self._limiter.acquire(self.stop)
            self.stats.add(requests=1, retries=int(attempt > 0))
            retry_after, whole = None, False
            start = time.monotonic()
            try:
                resp = self._pool.request("GET", url, preload_content=False)
            except urllib3.exceptions.HTTPError as exc:
                problems.append(_describe(exc, s.timeout))
            else:
                deadline = Deadline(resp, s.deadline, start)
                try:
                    if resp.status == 200:
                        result = consume(resp, deadline)
                        whole = True
                        return result
                    if resp.status in ABSENT_STATUSES:
                        raise Absent(f"not in the archive: HTTP {resp.status} for {url}")
                    if resp.status not in RETRY_STATUSES:
                        raise FetchFailed(f"HTTP {resp.status} {resp.reason or ''} for {url} (not retried)")
                    problems.append(f"HTTP {resp.status}")
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                except BadBody as exc:
                    problems.append(deadline.passed or f"bad answer: {exc}")
                except urllib3.exceptions.HTTPError as exc:  # the body broke off or stalled
                    problems.append(deadline.passed or _describe(exc, s.timeout))
                finally:
                    if deadline.disarm() or not whole:
                        resp.close()  # an unread or broken answer: its connection is not reused
                    resp.release_conn()
            if retry_after is not None:  # even on the last try: every worker waits, not this one only
                if retry_after > s.retry_after_max:
                    raise ArchiveBusy(url, retry_after)
                self._limiter.hold(retry_after)
            if attempt == s.retries:
                break
            delay = max(self._backoff(attempt), retry_after or 0.0)
            if self.stop.wait(delay):
                raise Cancelled
        raise FetchFailed(f"{url}: gave up after {len(problems)} tries ({'; '.join(problems)})")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half the doubled delay, plus up to half again."""
        d = min(self.settings.backoff_max, self.settings.backoff * 2**attempt)
        with self._rng_lock:
            return d / 2 + self._rng.uniform(0, d / 2)


class Deadline:
    """A request's deadline, ``seconds`` from ``start``: when it passes, the answer's socket is shut,
    so a read blocked on a server that trickles bytes returns at once (the read timeout restarts
    with each byte); ``passed`` then says why the answer broke off."""

    def __init__(self, resp: urllib3.BaseHTTPResponse, seconds: float, start: float) -> None:
        self._resp = resp
        self._seconds = seconds
        self._lock = threading.Lock()
        self._armed = True
        self.passed: str | None = None
        self._timer = threading.Timer(max(0.0, start + seconds - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self.passed = f"no whole answer within {self._seconds:g} s (the deadline of a request)"
            with contextlib.suppress(Exception):  # released or closed meanwhile: nothing left to stop
                self._resp.shutdown()

    def check(self) -> None:
        """BadBody if the answer ended because the deadline passed (it may look whole without a
        Content-Length)."""
        if self.passed:
            raise BadBody(self.passed)

    def disarm(self) -> bool:
        """Stop the timer; whether the deadline had passed (the socket is shut then)."""
        with self._lock:
            self._armed = False
        self._timer.cancel()
        return self.passed is not None


def _check_length(resp: urllib3.BaseHTTPResponse, size: int) -> None:
    """A body shorter than its Content-Length is truncated (urllib3 also raises on it)."""
    expected = resp.headers.get("Content-Length", "")
    if expected.isdigit() and "Content-Encoding" not in resp.headers and int(expected) != size:
        raise BadBody(f"truncated: {size} of {expected} bytes")


def _describe(exc: Exception, timeout: float) -> str:
    reason = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the cause
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, urllib3.exceptions.ProtocolError):
        return f"connection broken ({str(reason).splitlines()[0][:120]})"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "could not connect"
    return f"{type(reason).__name__}: {str(reason).splitlines()[0][:120] if str(reason) else ''}"
