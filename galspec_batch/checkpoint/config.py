"""The checkpoint's ``config.json``: everything that rebuilds the network and says what data it
fits (bands, image size, pixel scale, flux scale), checked before anything is allocated."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from galspec_batch.formats import (
    VersionedFormat,
    check_float,
    check_floats,
    check_int,
    check_str,
    require,
)

MAX_BANDS = 64
MAX_OUTPUTS = 256
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class ArchConfig:
    """Which registered model, for how many bands and outputs, with which head dropout."""

    name: str
    in_bands: int
    n_out: int
    dropout: float

    def __post_init__(self) -> None:
        check_str("model.name", self.name, 128)
        check_int("model.in_bands", self.in_bands, 1, MAX_BANDS)
        check_int("model.n_out", self.n_out, 1, MAX_OUTPUTS)
        check_float("model.dropout", self.dropout, 0.0, 0.999)


@dataclass(frozen=True)
class Preprocess:
    """Per-band asinh softening and the z-score of the stretched pixels (training statistics)."""

    softening: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "softening", check_floats("preprocess.softening", self.softening,
                                                           positive=True))
        n = len(self.softening)
        object.__setattr__(self, "mean", check_floats("preprocess.mean", self.mean, n))
        object.__setattr__(self, "std", check_floats("preprocess.std", self.std, n, positive=True))


@dataclass(frozen=True)
class CheckpointConfig(VersionedFormat):
    """A checkpoint's config (``config.json``). ``training``, ``data`` and ``init`` are free-form
    records of how it was made; the rest is checked."""

    FORMAT: ClassVar[str] = "galspec-checkpoint"
    VERSION: ClassVar[int] = 2
    MAX_BYTES: ClassVar[int] = 1 << 20

    model: ArchConfig
    bands: tuple[str, ...]
    image_size: tuple[int, int]
    latent_names: tuple[str, ...]
    latent_mean: tuple[float, ...]
    latent_std: tuple[float, ...]
    preprocess: Preprocess
    code_version: str
    pixel_scale: float | None = None
    survey: str | None = None
    flux_unit: str | None = None
    zero_points: tuple[float, ...] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] | None = None

    def validate(self) -> None:
        m = self.model
        require(isinstance(m, ArchConfig), f"model must be an ArchConfig, got {type(m).__name__}")
        object.__setattr__(self, "bands", tuple(check_str("bands", b, 32) for b in self.bands))
        require(len(self.bands) == m.in_bands and len(set(self.bands)) == len(self.bands),
                f"bands {list(self.bands)} must be {m.in_bands} distinct names (model.in_bands)")
        require(len(self.image_size) == 2, f"image_size must be [H, W], got {list(self.image_size)}")
        object.__setattr__(self, "image_size", tuple(check_int("image_size", v, 1, MAX_IMAGE_SIZE)
                                                     for v in self.image_size))
        object.__setattr__(self, "latent_names", tuple(check_str("latent_names", v, 64)
                                                       for v in self.latent_names))
        require(len(self.latent_names) == m.n_out,
                f"latent_names has {len(self.latent_names)} names; the model predicts {m.n_out}")
        object.__setattr__(self, "latent_mean", check_floats("latent_mean", self.latent_mean, m.n_out,
                                                             limit=1e6))
        object.__setattr__(self, "latent_std", check_floats("latent_std", self.latent_std, m.n_out,
                                                            positive=True, limit=1e6))
        require(isinstance(self.preprocess, Preprocess) and len(self.preprocess.softening) == m.in_bands,
                f"preprocess must give {m.in_bands} values per list (one per band)")
        check_str("code_version", self.code_version, 256)
        if self.pixel_scale is not None:
            check_float("pixel_scale", self.pixel_scale, 0.0, 3600.0, positive=True)
        for name in ("survey", "flux_unit"):
            if getattr(self, name) is not None:
                check_str(name, getattr(self, name), 128)
        if self.zero_points is not None:
            object.__setattr__(self, "zero_points", check_floats("zero_points", self.zero_points,
                                                                 m.in_bands, limit=100.0))

    def value_hash(self) -> str:
        """A hash of everything here that changes predictions (not the free-form records)."""
        records = ("training", "data", "init", "code_version")
        doc = {k: v for k, v in self.to_dict().items() if k not in records}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def _decode(cls, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        require(isinstance(body["model"], dict), "model must be an object")
        body["model"] = ArchConfig(**body["model"])
        require(isinstance(body["preprocess"], dict), "preprocess must be an object")
        body["preprocess"] = Preprocess(**body["preprocess"])
        for key in ("bands", "image_size", "latent_names"):
            require(isinstance(body[key], list), f"{key} must be a list")
            body[key] = tuple(body[key])
        for key in ("training", "data"):
            require(isinstance(body.get(key, {}), dict), f"{key} must be an object")
        return body
