"""The checkpoint's ``calibration.json``: per-latent factors on the predictive spread, fitted by
``galspec calibrate`` for one set of weights (its ``model_hash``) and applied by ``predict``."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from galspec_batch.atomic import file_sha256
from galspec_batch.checkpoint.files import CALIBRATION_FILE, WEIGHTS_FILE
from galspec_batch.errors import FormatError, MissingFileError
from galspec_batch.formats import VersionedFormat, check_floats, check_str, require


@dataclass(frozen=True)
class Calibration(VersionedFormat):
    """Scales for ``latent_i_std`` and the record of how they were fitted."""

    FORMAT: ClassVar[str] = "galspec-calibration"
    VERSION: ClassVar[int] = 1

    model_hash: str
    latent_names: tuple[str, ...]
    scale: tuple[float, ...]
    method: str
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    coverage_1sigma_before: tuple[float, ...] = ()
    coverage_1sigma_after: tuple[float, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_str("model_hash", self.model_hash, 64)
        object.__setattr__(self, "latent_names", tuple(self.latent_names))
        object.__setattr__(self, "scale", check_floats("scale", self.scale, len(self.latent_names),
                                                       positive=True, limit=1e6))
        check_str("method", self.method, 64)
        for name in ("coverage_1sigma_before", "coverage_1sigma_after"):
            object.__setattr__(self, name, check_floats(name, getattr(self, name)))
        require(isinstance(self.data, dict), "data must be an object")

    def record(self) -> dict[str, Any]:
        """What a catalog's provenance keeps of it."""
        return {"scale": list(self.scale), "method": self.method, "created": self.created,
                "model_hash": self.model_hash}


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
