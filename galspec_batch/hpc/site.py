"""A site's SLURM settings (a small TOML file, see ``slurm/site.example.toml``), the throughput
they promise, and the walltime check that refuses a job too short for its largest partition."""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from galspec_batch.errors import InputError, MissingFileError, UsageError, did_you_mean

SITE_ENV = "GALSPEC_SLURM_SITE"


@dataclass(frozen=True)
class Throughput:
    """Galaxies per second for one GPU and for one CPU core, and a fixed start-up time per task.

    ``cpu_core``: xresnet18, 64x64 px, 32 MC samples, eager, measured at 41/s on the 2-core dev
    machine; ``gpu`` is a placeholder until measured on a GPU (see slurm/README.md)."""

    gpu: float = 2000.0
    cpu_core: float = 40.0
    startup_s: float = 60.0


@dataclass(frozen=True)
class SiteConfig:
    """A site's settings (see ``slurm/site.example.toml``); command-line options override them."""

    account: str | None = None
    qos: str | None = None
    partition: str | None = None
    time: str = "01:00:00"
    finalize_time: str = "00:30:00"
    cpus_per_task: int = 1
    mem: str | None = None
    gpus_per_job: int = 0
    gres_name: str = "gpu"
    max_parallel: int = 0
    modules: tuple[str, ...] = ()
    setup: str = ""
    python: str = sys.executable
    extra_sbatch: tuple[str, ...] = ()
    dask_interface: str | None = None
    template: str | None = None
    finalize_template: str | None = None
    throughput: Throughput = field(default_factory=Throughput)

    @property
    def device(self) -> str:
        """Where a job's work runs: ``cuda`` with GPUs, else ``cpu``."""
        return "cuda" if self.gpus_per_job else "cpu"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "site settings") -> SiteConfig:
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise InputError(f"{source}: unknown key {key!r}.{did_you_mean(key, names)}")
        d = dict(d)
        if "throughput" in d:
            tp_names = [f.name for f in fields(Throughput)]
            for key in d["throughput"]:
                if key not in tp_names:
                    raise InputError(f"{source}: unknown key throughput.{key}.{did_you_mean(key, tp_names)}")
            d["throughput"] = Throughput(**{k: float(v) for k, v in d["throughput"].items()})
        for key in ("modules", "extra_sbatch"):
            if key in d:
                if isinstance(d[key], str) or not isinstance(d[key], list):
                    raise InputError(f"{source}: {key} must be a list of strings, got {d[key]!r}")
                d[key] = tuple(str(x) for x in d[key])
        return cls(**d)

    def with_overrides(self, **overrides) -> SiteConfig:
        """These settings with the given (non-None) command-line overrides."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_site(path: str | Path | None = None) -> SiteConfig:
    """Site settings from ``path``, else from ``$GALSPEC_SLURM_SITE``, else the defaults."""
    path = path or os.environ.get(SITE_ENV)
    if not path:
        return SiteConfig()
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"site settings file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"site settings file {path} is not valid TOML: {exc}") from None
    return SiteConfig.from_dict(data, source=str(path))


# -- walltime ----------------------------------------------------------------------------------


def parse_walltime(text: str) -> int:
    """Seconds in a SLURM time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    text = str(text).strip()
    expected = f"bad --time {text!r}: expected e.g. 30, 01:30:00 or 1-12:00:00"
    try:
        days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
        parts = [int(p) for p in rest.split(":")]
        d = int(days)
    except ValueError:
        raise UsageError(expected) from None
    if "-" in text:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, parts[0], parts[1]
    elif len(parts) == 3:
        h, m, s = parts
    else:
        raise UsageError(expected)
    total = ((d * 24 + h) * 60 + m) * 60 + s
    if total <= 0 or min(d, h, m, s) < 0:
        raise UsageError(f"bad --time {text!r}: must be positive")
    return total


def format_seconds(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def estimate_seconds(n_objects: int, site: SiteConfig) -> float:
    """Estimated seconds for one task to predict ``n_objects`` (start-up included)."""
    if site.gpus_per_job:
        rate = site.throughput.gpu * site.gpus_per_job
    else:
        rate = site.throughput.cpu_core * site.cpus_per_task
    return site.throughput.startup_s + n_objects / rate


def check_walltime(counts: dict[int, int], site: SiteConfig, order: int) -> None:
    """Refuse a walltime in which the largest partition cannot be predicted."""
    pixel, n = max(counts.items(), key=lambda kv: kv[1])
    need = estimate_seconds(n, site)
    limit = parse_walltime(site.time)
    if need > limit:
        per = f"{site.gpus_per_job} GPU(s)" if site.gpus_per_job else f"{site.cpus_per_task} CPU core(s)"
        raise UsageError(
            f"walltime {site.time} is too short: partition Norder={order}/Npix={pixel} ({n} objects) needs "
            f"about {format_seconds(need)} on {per} (throughput in the site TOML); raise --time"
        )
