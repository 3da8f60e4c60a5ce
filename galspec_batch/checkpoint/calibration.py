"""The checkpoint's ``calibration.json``: the calibrated predictive distribution of each target
and the anomaly score's null model, fitted for one set of weights (its ``model_hash``) by
``galspec train`` on its validation split or by ``galspec calibrate`` on new labelled data, and
applied by ``predict``."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from galspec_batch.atomic import file_sha256
from galspec_batch.checkpoint.files import CALIBRATION_FILE, WEIGHTS_FILE
from galspec_batch.errors import FormatError, MissingFileError
from galspec_batch.formats import VersionedFormat, check_floats, check_int, check_str, require
from galspec_batch.options import MAX_MC_SAMPLES
from galspec_batch.uncertainty import NU_MAX, SIGMAS, interval_factor


@dataclass(frozen=True)
class Calibration(VersionedFormat):
    """The calibrated predictive distribution of each target (see :mod:`galspec_batch.uncertainty`)
    and the null distribution of the anomaly score, fitted for one set of weights.

    ``scale[i]`` multiplies target i's predicted std (both its parts) into the calibrated 1-sigma,
    ``nu[i]`` is its Student-t shape; ``anomaly`` is the anomaly score's null model
    (:class:`galspec_batch.anomalies.NullModel` as a dict), None where too few objects were given;
    ``mc_samples`` and ``seed`` are those of the MC-dropout predictions it was fitted to;
    ``fitted_on`` says which objects; ``assessment`` holds the held-out numbers before and after.
    """

    FORMAT: ClassVar[str] = "galspec-calibration"
    VERSION: ClassVar[int] = 2

    model_hash: str
    targets: tuple[str, ...]
    scale: tuple[float, ...]
    nu: tuple[float, ...]
    mc_samples: int
    seed: int
    fitted_on: dict[str, Any]
    method: str = "student-t, 68.27% and 95.45% quantiles"
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    assessment: dict[str, Any] = field(default_factory=dict)
    anomaly: dict[str, Any] | None = None

    def validate(self) -> None:
        check_str("model_hash", self.model_hash, 64)
        object.__setattr__(self, "targets", tuple(check_str("targets", t, 64) for t in self.targets))
        n = len(self.targets)
        object.__setattr__(self, "scale", check_floats("scale", self.scale, n, positive=True, limit=1e6))
        object.__setattr__(self, "nu", check_floats("nu", self.nu, n, positive=True, limit=NU_MAX))
        check_int("mc_samples", self.mc_samples, 2, MAX_MC_SAMPLES)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_str("method", self.method, 128)
        for name in ("fitted_on", "assessment"):
            require(isinstance(getattr(self, name), dict), f"{name} must be an object")
        require(self.anomaly is None or isinstance(self.anomaly, dict), "anomaly must be an object or null")

    def interval_factors(self) -> dict[str, list[float]]:
        """k -> per-target half-width of the k-sigma interval in units of the 1-sigma."""
        return {str(k): [float(interval_factor(nu, k)) for nu in self.nu] for k in SIGMAS}

    def record(self) -> dict[str, Any]:
        """What a catalog's provenance keeps of it: everything a reader of the catalog needs."""
        return {"targets": list(self.targets), "scale": list(self.scale), "nu": list(self.nu),
                "interval_factors": self.interval_factors(), "method": self.method,
                "created": self.created, "model_hash": self.model_hash, "fitted_on": self.fitted_on,
                "mc_samples": self.mc_samples, "anomaly": self.anomaly}


def save_calibration(checkpoint: str | Path, calibration: Calibration) -> Path:
    """Write ``calibration.json`` into a checkpoint, atomically; it must be for these weights."""
    checkpoint = Path(checkpoint)
    weights = checkpoint / WEIGHTS_FILE
    if not weights.is_file():
        raise MissingFileError(f"{checkpoint} is not a galspec checkpoint (no {WEIGHTS_FILE})")
    if calibration.model_hash != file_sha256(weights):
        raise FormatError(f"this calibration was fitted for other weights than {weights}")
    return calibration.write(checkpoint / CALIBRATION_FILE)


def load_calibration(checkpoint: str | Path, model_hash: str | None = None) -> Calibration | None:
    """The checkpoint's calibration, or None when it has none. Refuses a calibration made for
    other weights (``model_hash``, computed when not given)."""
    path = Path(checkpoint) / CALIBRATION_FILE
    if not path.is_file():
        return None
    cal = Calibration.read(path)
    model_hash = model_hash or file_sha256(Path(checkpoint) / WEIGHTS_FILE)
    if cal.model_hash != model_hash:
        raise FormatError(f"{path} was fitted for other weights (model_hash differs); "
                          "rerun galspec calibrate")
    return cal
