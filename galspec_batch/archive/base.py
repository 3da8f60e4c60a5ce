"""What every archive client shares: the context of a run (fetcher, manifest, root URL), the
objects asked for and what came back, and one file fetched unless the manifest already has it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from galspec_batch.archive.http import Absent, Fetcher
from galspec_batch.archive.manifest import Manifest

CUBE = "cube"  # the key of a one-file cube among an object's files


@dataclass(frozen=True)
class Target:
    """One object asked for: its id, position and where it came from (a catalog line)."""

    object_id: int
    ra: float
    dec: float
    label: str


@dataclass(frozen=True)
class Fetched:
    """An object's files (band -> path, or CUBE -> path), the bands the archive lacks, and how
    many of its files this run downloaded and how many it found already here."""

    target: Target
    files: dict[str, Path] = field(default_factory=dict)
    missing_bands: tuple[str, ...] = ()
    downloaded: int = 0
    reused: int = 0


@dataclass(frozen=True)
class Context:
    """A run's fetcher and manifest, and the archive's root URL (the service's or a mirror's)."""

    fetcher: Fetcher
    manifest: Manifest
    root: str

    def url(self, key: str) -> str:
        return self.root + key

    def cutout_path(self, survey: str, size: int, object_id: int, band: str | None = None) -> Path:
        """``<folder>/<survey>/<size>px/<id mod 1000>/<id>[_<band>].fits``: a few thousand files a folder."""
        name = f"{object_id}_{band}.fits" if band else f"{object_id}.fits"
        return self.manifest.folder / survey / f"{size}px" / f"{abs(object_id) % 1000:03d}" / name

    def check_absent(self, key: str) -> None:
        """Absent, without asking again, when the archive already said it does not have ``key``."""
        entry = self.manifest.get(key)
        if entry is not None and entry["kind"] == "absent":
            raise Absent(entry["reason"])

    def absent(self, key: str, reason: str) -> Absent:
        """Record that the archive does not have ``key``; the Absent to raise."""
        self.manifest.add_absent(key, reason)
        return Absent(reason)

    def fetch_file(self, key: str, dest: Path, check: Callable[[Path], None]) -> bool:
        """Download ``key`` to ``dest`` unless the manifest has it there intact; True if downloaded.
        An Absent answer is recorded, so a rerun does not ask again."""
        if self.manifest.has_file(key, dest):
            return False
        self.check_absent(key)
        try:
            record = self.fetcher.get_file(self.url(key), dest, check)
        except Absent as exc:
            raise self.absent(key, str(exc)) from None
        self.manifest.add_file(key, dest, record)
        return True
