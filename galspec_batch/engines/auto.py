"""Engines by name, and ``auto``, which picks the fastest one available.

The ``auto`` rule (:func:`choose_engine`): on a GPU, ``tensorrt`` where ``import tensorrt``
works, else ``compile``. On the CPU, ``eager`` and ``onnxruntime`` are both timed on 16 random
images of the run's shape, after one warm-up run each, and the faster one is kept; the choice is
remembered on disk per model, image shape, precision, thread count and library versions, so a
machine always makes the same choice for a model. ``galspec predict`` resolves ``auto`` once per
run, on the coordinator, and records the engine that ran. ``compile`` is not a CPU candidate:
compiling takes longer (about a minute) than it saves on a partition.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from galspec_batch.atomic import write_json
from galspec_batch.errors import UsageError, did_you_mean
from galspec_batch.options import ENGINE_NAMES

from . import tensorrt as trt_engine
from .base import Engine, check_images, check_precision, random_flux, resolve_device, state_digest
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
CHOICE_FILE = "auto-choices.json"


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


def _choice_file() -> Path:
    return trt_engine.default_cache_dir() / CHOICE_FILE


def choose_engine(net: nn.Module, *, device: str | torch.device = "cpu", precision: str = "fp32",
                  input_shape: tuple[int, ...], threads: int = 0, cache_key: str | None = None) -> str:
    """The engine ``auto`` means for this network, device and input: on a GPU, ``tensorrt`` where
    it imports (else ``compile``); on the CPU the faster of ``eager`` and ``onnxruntime`` on
    random images of ``input_shape`` with ``threads`` torch threads. A CPU choice is remembered in
    the engine cache (by ``cache_key``, e.g. the model hash, with shape, precision, threads and
    versions), so that every run of a model on a machine makes the same choice."""
    device = resolve_device(device)
    if device.type == "cuda":
        trt = unavailable_reason("tensorrt", device) is None and precision != "bf16"
        return "tensorrt" if trt else "compile"
    names = ["eager"] + (["onnxruntime"] if unavailable_reason("onnxruntime") is None
                         and precision != "bf16" else [])
    if len(names) == 1:
        return names[0]
    import onnxruntime

    threads = threads or torch.get_num_threads()
    key = "|".join(map(str, (cache_key or state_digest(net), tuple(input_shape), precision, threads,
                             torch.__version__, onnxruntime.__version__)))
    cache = _choice_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known and known[key] in names:
        return known[key]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = random_flux(PROBE_BATCH, tuple(input_shape))
        times = {n: _seconds(ENGINES[n](net, device=device, precision=precision), x) for n in names}
    finally:
        torch.set_num_threads(old)
    choice = min(times, key=times.get)
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a probe
        write_json(cache, {**known, key: choice})
    return choice


class AutoCpuEngine(Engine):
    """``auto`` on the CPU, for library use: the engine :func:`choose_engine` picks for the shape
    of the first batch it is given."""

    def __init__(self, net: nn.Module, **kwargs) -> None:
        self.device = kwargs["device"]
        self.precision = kwargs["precision"]
        self._net, self._kwargs = net, kwargs
        self.chosen: Engine | None = None

    @property
    def name(self) -> str:
        return "auto" if self.chosen is None else self.chosen.name

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x)
        if self.chosen is None:
            name = choose_engine(self._net, device=self.device, precision=self.precision,
                                 input_shape=tuple(x.shape[1:]))
            self.chosen = ENGINES[name](self._net, **self._kwargs)
        return self.chosen.features(x)
