"""The settings of a prediction run: built once (by the CLI or a notebook), then passed whole
through ``predict``, ``submit``, the SLURM plan, every worker and the catalog's provenance.

This module imports no torch, so the command line starts fast; engines, MC dropout and the
runner take their defaults from here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from galspec_batch import defaults as D
from galspec_batch.errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from galspec_batch.regions import Region

DEFAULT_MC_SAMPLES = 32
DEFAULT_BATCH_SIZE = 256
DEFAULT_ENGINE = "auto"
ENGINE_NAMES = ("auto", "eager", "compile", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
CLUSTERS = ("auto", "local", "cuda", "none")
MAX_MC_SAMPLES = 4096
MAX_BATCH_SIZE = 1 << 16
MIN_MARGIN_ARCSEC = 1.0  # the ring of pixels of a margin doubles with each order: 1" is order 16
MAX_MARGIN_ARCSEC = 3600.0


def check_device(device: object) -> str:
    """``--device`` as written checked: ``cpu``, ``cuda`` or ``cuda:N`` (whether such a GPU is
    there is for the process that runs on it to say)."""
    if not (isinstance(device, str) and re.fullmatch(r"cpu|cuda(:[0-9]+)?", device)):
        raise UsageError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    return device


def default_device(cluster: object) -> str:
    """``cuda`` for a cluster of GPU workers, else ``cpu``."""
    return "cuda" if cluster == "cuda" else "cpu"


@dataclass(frozen=True)
class Layout:
    """The published catalog's layout: ``partition_rows`` the most rows merged into one partition
    file (a store partition larger than that stays whole); ``margin_arcsec`` the margin cache's
    radius (0: none). None keeps what the catalog recorded (a new catalog: the defaults)."""

    partition_rows: int | None = None
    margin_arcsec: float | None = None

    def __post_init__(self) -> None:
        rows, margin = self.partition_rows, self.margin_arcsec
        if rows is not None and not (isinstance(rows, int) and rows >= 1):
            raise UsageError(f"--partition-rows {rows!r}: expected an integer >= 1")
        if margin is not None:
            ok = isinstance(margin, int | float) and (margin == 0 or MIN_MARGIN_ARCSEC <= margin)
            if not ok or margin > MAX_MARGIN_ARCSEC:
                raise UsageError(f"--margin-arcsec {margin!r}: expected 0 (no margin cache) or a number in "
                                 f"[{MIN_MARGIN_ARCSEC:g}, {MAX_MARGIN_ARCSEC:g}]")
            object.__setattr__(self, "margin_arcsec", float(margin))

    def resolved(self, recorded: dict[str, Any] | None = None) -> Layout:
        """Every field given: this layout's, else ``recorded``'s, else the default."""
        recorded = recorded or {}
        rows = self.partition_rows or recorded.get("partition_rows") or D.PARTITION_ROWS
        margin = next(v for v in (self.margin_arcsec, recorded.get("margin_arcsec"), D.MARGIN_ARCSEC)
                      if v is not None)
        return Layout(rows, margin)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PredictOptions:
    """How a catalog is predicted. ``precision`` defaults to fp16 on a GPU and fp32 on the CPU;
    ``region`` and ``partitions`` select what to predict (None: everything)."""

    mc_samples: int = DEFAULT_MC_SAMPLES
    engine: str = DEFAULT_ENGINE
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    device: str = "cpu"
    precision: str | None = None
    region: Region | None = None
    partitions: tuple[int, ...] | None = None
    calibrate: bool = True
    rescale_flux: bool = False
    allow_survey_mismatch: bool = False
    layout: Layout = Layout()

    def __post_init__(self) -> None:
        def bad(option: str, value: object, expected: str) -> UsageError:
            return UsageError(f"{option} {value!r}: expected {expected}")

        if not (isinstance(self.mc_samples, int) and 2 <= self.mc_samples <= MAX_MC_SAMPLES):
            raise bad("--mc-samples", self.mc_samples, f"an integer in [2, {MAX_MC_SAMPLES}]")
        if not (isinstance(self.batch_size, int) and 1 <= self.batch_size <= MAX_BATCH_SIZE):
            raise bad("--batch-size", self.batch_size, f"an integer in [1, {MAX_BATCH_SIZE}]")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise bad("--seed", self.seed, "an integer in [0, 2**63)")
        if self.engine not in ENGINE_NAMES:
            raise UsageError(f"unknown --engine {self.engine!r}; expected one of {', '.join(ENGINE_NAMES)}."
                             + did_you_mean(self.engine, ENGINE_NAMES))
        check_device(self.device)
        precision = self.precision or ("fp16" if self.device.startswith("cuda") else "fp32")
        if precision not in PRECISIONS:
            raise bad("--precision", precision, " | ".join(PRECISIONS))
        object.__setattr__(self, "precision", precision)
        from galspec_batch.regions import parse_partitions, parse_region  # astropy: not at CLI start

        if self.region is not None:
            object.__setattr__(self, "region", parse_region(self.region))
        if self.partitions is not None:
            object.__setattr__(self, "partitions", tuple(parse_partitions(self.partitions)))

    def to_args(self) -> list[str]:
        """The ``galspec predict`` options that rebuild these options (for job scripts)."""
        args = ["--mc-samples", str(self.mc_samples), "--engine", self.engine,
                "--batch-size", str(self.batch_size), "--seed", str(self.seed),
                "--device", self.device, "--precision", str(self.precision)]
        if self.region is not None:
            args += ["--region", str(self.region)]
        if self.partitions is not None:
            args += ["--partitions", ",".join(str(p) for p in self.partitions)]
        if not self.calibrate:
            args.append("--no-calibration")
        if self.rescale_flux:
            args.append("--rescale-flux")
        if self.allow_survey_mismatch:
            args.append("--allow-survey-mismatch")
        if self.layout.partition_rows is not None:
            args += ["--partition-rows", str(self.layout.partition_rows)]
        if self.layout.margin_arcsec is not None:
            args += ["--margin-arcsec", f"{self.layout.margin_arcsec:g}"]
        return args

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON values (region as text)."""
        return {
            "mc_samples": self.mc_samples, "engine": self.engine, "batch_size": self.batch_size,
            "seed": self.seed, "device": self.device, "precision": self.precision,
            "region": None if self.region is None else str(self.region),
            "partitions": None if self.partitions is None else list(self.partitions),
            "calibrate": self.calibrate, "rescale_flux": self.rescale_flux,
            "allow_survey_mismatch": self.allow_survey_mismatch, "layout": self.layout.to_dict(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictOptions:
        d = {k: (tuple(v) if k == "partitions" and v is not None else v) for k, v in d.items()}
        return cls(**{**d, "layout": Layout(**d.get("layout", {}))})
