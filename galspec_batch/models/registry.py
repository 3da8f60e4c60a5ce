"""Image-to-latent models by name, and the one face they all share (body, head, forward).

Each model family module registers small builder functions with `@register_model("name", ...)`,
timm-style: the registry entry carries the model's own defaults (its one-cycle max learning rate,
the layer types that must stay in float32 inside a half-precision body). The package `__init__`
imports the family modules, so `create_model` knows every name once `galspec_batch.models` is
imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from galspec_batch import defaults as D

from ..errors import InputError, UsageError, did_you_mean
from .heads import check_head, head_width

Builder = Callable[..., "SpectrumNet"]
PAPER_MAX_LR = 0.03  # Wu & Peek (2020): one-cycle max learning rate


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and its defaults."""

    name: str
    builder: Builder
    max_lr: float = PAPER_MAX_LR
    fp32_layers: tuple[type[nn.Module], ...] = ()  # kept in float32 when the body runs in fp16/bf16


_REGISTRY: dict[str, ModelEntry] = {}


class SpectrumNet(nn.Module):
    """A body (features, through global pool and flatten) and a head (Dropout -> Linear) that
    predicts ``n_out`` targets: a mean and a variance each (``head="gaussian"``) or a mean alone
    (``"point"``; see :mod:`galspec_batch.models.heads`).

    The head is separate so that inference can run the body once and the head many times with
    dropout on (MC dropout): dropout is active when `model.head` is in train mode.
    """

    def __init__(self, name: str, body: nn.Module, num_features: int, in_bands: int, n_out: int,
                 dropout: float, head: str = D.HEAD) -> None:
        super().__init__()
        self.model_name, self.in_bands, self.n_out, self.dropout = name, in_bands, n_out, dropout
        self.head_kind = check_head(head)
        self.num_features = num_features
        self.body = body
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, head_width(head, n_out)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_bands, H, W] images -> [N, num_features] features."""
        if x.ndim != 4 or x.shape[1] != self.in_bands:
            raise InputError(f"{self.model_name}: got input of shape {tuple(x.shape)}, "
                             f"expected [N, {self.in_bands}, H, W]")
        return self.body(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """[N, num_features] features -> [N, head_width] raw outputs (``split_head`` reads them)."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def register_model(name: str, *, max_lr: float = PAPER_MAX_LR,
                   fp32_layers: tuple[type[nn.Module], ...] = ()) -> Callable[[Builder], Builder]:
    """Decorator adding a builder `fn(in_bands, n_out, dropout, head) -> SpectrumNet` under `name`,
    with the model's defaults."""

    def add(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, max_lr, tuple(fp32_layers))
        return fn

    return add


def model_entry(name: str) -> ModelEntry:
    """The registry entry of model `name` (its builder and defaults)."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(list_models())}."
                         + did_you_mean(name, list_models()))
    return _REGISTRY[name]


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, *, in_bands: int = D.N_BANDS, n_out: int = D.N_LATENTS,
                 dropout: float = D.HEAD_DROPOUT, head: str = D.HEAD) -> SpectrumNet:
    """A freshly initialised model `name` for `in_bands` input bands and `n_out` targets."""
    entry = model_entry(name)
    if not isinstance(in_bands, int) or in_bands < 1:
        raise InputError(f"{name}: in_bands must be a positive integer, got {in_bands!r}")
    if not isinstance(n_out, int) or n_out < 1:
        raise InputError(f"{name}: n_out must be a positive integer, got {n_out!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(f"{name}: dropout must be in [0, 1), got {dropout!r}")
    return entry.builder(in_bands=in_bands, n_out=n_out, dropout=float(dropout), head=check_head(head))
