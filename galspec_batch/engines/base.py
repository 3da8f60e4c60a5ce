"""What every engine shares: the body graph it runs, precisions, input checks and the model hash.

An engine runs the body only: raw float32 flux images [N, B, H, W] (NaN allowed) -> float32
features [N, F]. The dropout head runs separately (:mod:`galspec_batch.mc`), many times per body
pass. Before anything is compiled or exported the network is copied, put in eval mode and its
deconvolution layers are folded into plain convolutions (exact in eval mode).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import torch
from torch import nn

from galspec_batch.errors import InputError, did_you_mean
from galspec_batch.options import PRECISIONS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPUT_NAME = "images"
OUTPUT_NAME = "features"


def check_precision(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        raise InputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}."
                         + did_you_mean(precision, PRECISIONS))
    return DTYPES[precision]


def check_images(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if it is a floating-point tensor [N, B, H, W]; anything else is an InputError."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"engine input must be a floating-point torch.Tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 4:
        raise InputError(f"engine input has shape {tuple(x.shape)}; expected [N, bands, H, W]")
    return x


class _Fp32Island(nn.Module):
    """Runs a module in float32 inside a half-precision body (its sums can overflow float16)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


def _fp32_layers(net: nn.Module) -> tuple[type[nn.Module], ...]:
    """The layer types the registry says must stay in float32 for this network's model."""
    from galspec_batch.models import model_entry

    name = getattr(getattr(net, "cnn", net), "model_name", None)
    return model_entry(name).fp32_layers if name is not None else ()


def _to_low_precision(module: nn.Module, dtype: torch.dtype, keep: tuple[type[nn.Module], ...]) -> nn.Module:
    module = module.to(dtype)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, keep):
                setattr(parent, name, _Fp32Island(child))
    return module


def _bake_parametrizations(module: nn.Module) -> nn.Module:
    """Freeze parametrized weights (spectral norm) at their eval-mode values, in place.

    In eval mode spectral norm divides by a sigma computed from stored vectors: a constant, which
    exporters cannot trace (aten::vdot) and eager need not recompute on every call. The
    parametrization is swapped for an identity rather than removed, because
    ``remove_parametrizations`` edits the module's class, which a deep copy shares with the original.
    """
    from torch.nn.utils import parametrize

    for m in module.modules():
        if parametrize.is_parametrized(m):
            for name, plist in m.parametrizations.items():
                with torch.no_grad():
                    value = getattr(m, name).detach().clone()
                    plist.original.copy_(value)
                for i in range(len(plist)):
                    plist[i] = nn.Identity()
    return module


class FeatureGraph(nn.Module):
    """The body every engine runs: float32 images -> float32 features.

    With a lower ``dtype`` the CNN runs in that dtype while the preprocessing of a checkpoint's
    network (NaN -> 0, asinh, z-score) stays in float32; the features come back as float32.
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from galspec_batch.models import fold_deconv

        net = _bake_parametrizations(fold_deconv(net))  # a deep copy, in eval mode
        self.split = hasattr(net, "preprocess") and hasattr(net, "cnn")
        if dtype != torch.float32:
            keep = _fp32_layers(net)
            if self.split:
                net.cnn = _to_low_precision(net.cnn, dtype, keep)
            else:
                net = _to_low_precision(net, dtype, keep)
        self.net = net.eval()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32:
            return self.net.forward_features(x)
        if self.split:
            return self.net.cnn.forward_features(self.net.preprocess(x).to(self.dtype)).float()
        return self.net.forward_features(x.to(self.dtype)).float()


def state_digest(net: nn.Module) -> str:
    """A short content hash of a network: its class and every parameter and buffer."""
    digest = hashlib.sha256(type(net).__qualname__.encode())
    for name, tensor in net.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: torch sees no CUDA GPU here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Engine(ABC):
    """Runs a network's body: ``features(images)`` -> float32 [N, F] on ``self.device``."""

    name: str
    device: torch.device
    precision: str

    @abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 images [N, B, H, W] (any device) -> float32 features [N, F] on ``self.device``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r})")


def random_flux(n: int, input_shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """A batch of fake flux images: noise plus a few NaN pixels (for checks, not science)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *input_shape), generator=g) * 0.3
    x[:, :, 0, :3] = float("nan")
    return x
