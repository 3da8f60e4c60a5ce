"""Engines by name, and ``auto``, which picks the fastest one available.

The ``auto`` rule: on a GPU, ``tensorrt`` where ``import tensorrt`` works, else ``compile``. On
the CPU, ``eager`` and ``onnxruntime`` are both timed on (at most 16 of) the first batch it is
given, after one warm-up run each, and the faster one is kept; the choice is remembered for the
process, per network, image shape, precision and thread count. ``compile`` is not a CPU
candidate: compiling takes longer (about a minute) than it saves on a partition.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from galspec_batch.errors import UsageError, did_you_mean
from galspec_batch.options import ENGINE_NAMES

from . import tensorrt as trt_engine
from .base import Engine, check_images, check_precision, resolve_device, state_digest
from .compiled import CompiledEngine
from .eager import EagerEngine
from .onnx import OnnxRuntimeEngine

ENGINES: dict[str, type[Engine]] = {
    "eager": EagerEngine,
    "compile": CompiledEngine,
    "onnxruntime": OnnxRuntimeEngine,
    "tensorrt": trt_engine.TensorRTEngine,
}
assert set(ENGINE_NAMES) == {"auto", *ENGINES}, "options.ENGINE_NAMES lists every engine"
PROBE_BATCH = 16
_CPU_CHOICES: dict[tuple, str] = {}


def unavailable_reason(name: str, device: str | torch.device = "cpu") -> str | None:
    """Why engine ``name`` cannot run on ``device`` here, or None when it can."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    if name == "tensorrt":
        return trt_engine.unavailable_reason(device)
    if name == "onnxruntime":
        if device.type != "cpu":
            return "the onnxruntime engine runs on the CPU"
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"`import onnxruntime` failed ({exc})"
    return None


def list_engines(device: str | torch.device = "cpu") -> list[str]:
    """The engine names that can run on ``device`` here (``auto`` always can)."""
    return [n for n in ENGINE_NAMES if n == "auto" or unavailable_reason(n, device) is None]


def create_engine(
    name: str,
    net: nn.Module,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool | None = None,
    max_batch: int = 1024,
    cache_dir: str | os.PathLike | None = None,
) -> Engine:
    """An engine running ``net``'s body (``features``) on ``device``.

    ``name`` is one of auto, eager, compile, onnxruntime, tensorrt. ``precision`` (fp32, fp16,
    bf16) is the CNN's dtype; features always come back as float32. ``channels_last`` defaults
    to on for a GPU; ``cache_dir`` holds TensorRT engines.
    """
    if name not in ENGINE_NAMES:
        raise UsageError(f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}."
                         + did_you_mean(name, ENGINE_NAMES))
    check_precision(precision)
    if max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {max_batch}")
    device = resolve_device(device)
    kwargs = dict(device=device, precision=precision, channels_last=channels_last, max_batch=max_batch)
    if name == "auto":
        if device.type == "cuda":
            name = "tensorrt" if unavailable_reason("tensorrt", device) is None else "compile"
            if name == "tensorrt" and precision == "bf16":
                name = "compile"  # the exported graphs are fp32 or fp16
        else:
            return AutoCpuEngine(net, **kwargs)
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise UsageError(f"engine {name!r} cannot run on {device}: {reason}. "
                         f"Engines available here: {', '.join(list_engines(device))}")
    if name == "tensorrt":
        return ENGINES[name](net, cache_dir=cache_dir, **kwargs)
    return ENGINES[name](net, **kwargs)


def _seconds(engine: Engine, x: torch.Tensor) -> float:
    engine.features(x)  # warm-up (and, for onnxruntime, the export)
    start = time.perf_counter()
    engine.features(x)
    return time.perf_counter() - start


class AutoCpuEngine(Engine):
    """``auto`` on the CPU: eager or onnxruntime, whichever runs the first batch faster."""

    def __init__(self, net: nn.Module, **kwargs) -> None:
        self.device = kwargs["device"]
        self.precision = kwargs["precision"]
        self._net, self._kwargs = net, kwargs
        self.chosen: Engine | None = None

    @property
    def name(self) -> str:
        return "auto" if self.chosen is None else self.chosen.name

    def _choose(self, x: torch.Tensor) -> Engine:
        key = (state_digest(self._net), tuple(x.shape[1:]), self.precision, torch.get_num_threads())
        names = ["eager"] + (["onnxruntime"] if unavailable_reason("onnxruntime") is None
                             and self.precision != "bf16" else [])
        if key in _CPU_CHOICES:
            return ENGINES[_CPU_CHOICES[key]](self._net, **self._kwargs)
        engines = {n: ENGINES[n](self._net, **self._kwargs) for n in names}
        times = {n: _seconds(e, x[:PROBE_BATCH]) for n, e in engines.items()}
        _CPU_CHOICES[key] = min(times, key=times.get)
        return engines[_CPU_CHOICES[key]]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x)
        if self.chosen is None:
            self.chosen = self._choose(x)
        return self.chosen.features(x)
