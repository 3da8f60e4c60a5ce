"""The checkpoint's ``config.json``: everything that rebuilds the network and says what data it
fits (bands, image size, pixel scale, flux scale), checked before anything is allocated."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from galspec_batch.columns import REDSHIFT, latent_names
from galspec_batch.formats import (
    VersionedFormat,
    check_float,
    check_floats,
    check_int,
    check_str,
    require,
)
from galspec_batch.models.heads import HEADS

MAX_BANDS = 64
MAX_OUTPUTS = 256
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class ArchConfig:
    """Which registered model, for how many bands and outputs, with which head dropout."""

    name: str
    in_bands: int
    n_out: int  # targets (a gaussian head has two outputs per target)
    dropout: float
    head: str

    def __post_init__(self) -> None:
        check_str("model.name", self.name, 128)
        check_int("model.in_bands", self.in_bands, 1, MAX_BANDS)
        check_int("model.n_out", self.n_out, 1, MAX_OUTPUTS)
        check_float("model.dropout", self.dropout, 0.0, 0.999)
        require(self.head in HEADS, f"model.head must be one of {list(HEADS)}, got {self.head!r}")


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
    """A checkpoint's config (``config.json``). ``targets`` are what the network predicts: the VAE
    latents ``latent_1..latent_L``, then ``z`` where it predicts the redshift; ``target_mean`` and
    ``target_std`` z-score them. ``training``, ``data`` and ``init`` are free-form records of how
    it was made; the rest is checked."""

    FORMAT: ClassVar[str] = "galspec-checkpoint"
    VERSION: ClassVar[int] = 3
    MAX_BYTES: ClassVar[int] = 1 << 20

    model: ArchConfig
    bands: tuple[str, ...]
    image_size: tuple[int, int]
    targets: tuple[str, ...]
    target_mean: tuple[float, ...]
    target_std: tuple[float, ...]
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
        object.__setattr__(self, "targets", tuple(check_str("targets", v, 64) for v in self.targets))
        require(len(self.targets) == m.n_out,
                f"targets has {len(self.targets)} names; the model predicts {m.n_out}")
        n_latents = m.n_out - (self.targets[-1] == REDSHIFT)
        require(n_latents >= 1 and list(self.targets[:n_latents]) == latent_names(n_latents),
                f"targets must be latent_1..latent_L, then optionally {REDSHIFT!r}; got {list(self.targets)}")
        object.__setattr__(self, "target_mean", check_floats("target_mean", self.target_mean, m.n_out,
                                                             limit=1e6))
        object.__setattr__(self, "target_std", check_floats("target_std", self.target_std, m.n_out,
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

    @property
    def latent_names(self) -> tuple[str, ...]:
        """The targets that are VAE latents."""
        return self.targets[: len(self.targets) - self.redshift]

    @property
    def redshift(self) -> bool:
        """Whether the network predicts the redshift (its last target)."""
        return self.targets[-1] == REDSHIFT

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
        for key in ("bands", "image_size", "targets"):
            require(isinstance(body[key], list), f"{key} must be a list")
            body[key] = tuple(body[key])
        for key in ("training", "data"):
            require(isinstance(body.get(key, {}), dict), f"{key} must be an object")
        return body
