"""The ``tensorrt`` engine: the exported ONNX body built into a TensorRT engine, cached on disk.

The network is built strongly typed from the ONNX graph of the chosen precision (for fp16 the
CNN is float16 in the graph, its inputs and outputs float32), which is how TensorRT 10 and 11 both
take reduced precision (11 removed the FP16 builder flag). One optimization profile covers batch
1 to ``max_batch`` (tuned for ``max_batch``). A built engine is serialized to
``<cache_dir>/<gpu>_<tensorrt version>_<model hash>_<B>x<H>x<W>_max<max_batch>_<precision>.engine``
and reused by every later process on the same GPU model with the same TensorRT and weights.
Execution reads and writes torch tensors in place (``set_tensor_address``) on torch's current
CUDA stream, so it orders correctly with the copies around it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path
from galspec_batch.errors import FormatError, GalspecError, UsageError

from .base import INPUT_NAME, OUTPUT_NAME, Engine, check_images, resolve_device, state_digest
from .onnx import export_onnx

MIN_VERSION = 10
WORKSPACE_BYTES = 4 << 30


def unavailable_reason(device: str | torch.device = "cuda") -> str | None:
    """Why the tensorrt engine cannot run here, or None when it can."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return f"`import tensorrt` failed ({exc})"
    if int(trt.__version__.split(".")[0]) < MIN_VERSION:
        return f"TensorRT {trt.__version__} is too old; {MIN_VERSION}.0 or newer is needed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    if torch.device(device).type != "cuda":
        return f"TensorRT runs on a CUDA device, not {device!r}"
    return None


def default_cache_dir() -> Path:
    return Path(os.environ.get("GALSPEC_ENGINE_CACHE", Path.home() / ".cache" / "galspec" / "engines"))


def engine_file_name(gpu_name: str, trt_version: str, net_hash: str, input_shape: tuple[int, int, int],
                     max_batch: int, precision: str) -> str:
    """The cache file name of an engine: everything the serialized engine depends on."""
    gpu = re.sub(r"[^A-Za-z0-9.-]+", "-", gpu_name).strip("-")
    shape = "x".join(str(int(s)) for s in input_shape)
    return f"{gpu}_{trt_version}_{net_hash}_{shape}_max{int(max_batch)}_{precision}.engine"


def _logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def build_serialized_engine(onnx_model: bytes, input_shape: tuple[int, int, int], *, max_batch: int,
                            precision: str) -> bytes:
    """Parse an exported body and build a serialized engine for batches 1..max_batch."""
    import tensorrt as trt

    logger = _logger()
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FormatError(f"TensorRT could not parse the exported ONNX body: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, as in eager
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *input_shape), (max_batch, *input_shape), (max_batch, *input_shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise GalspecError(f"TensorRT failed to build an engine for input [1..{max_batch}, "
                           f"{', '.join(map(str, input_shape))}] at {precision} (see its log above)")
    return bytes(serialized)


class TensorRTEngine(Engine):
    """Runs the body as a TensorRT engine (built on first use per image shape, then cached)."""

    name = "tensorrt"

    def __init__(self, net: nn.Module, *, device: str | torch.device = "cuda", precision: str = "fp16",
                 channels_last: bool | None = None, max_batch: int = 1024,
                 cache_dir: str | os.PathLike | None = None) -> None:
        reason = unavailable_reason(device)
        if reason is not None:
            raise UsageError(f"the tensorrt engine cannot run here: {reason}")
        if precision not in D.EXPORT_PRECISIONS:
            raise UsageError(f"the tensorrt engine supports fp32 or fp16, got {precision!r}")
        self.device = resolve_device(device)
        self.precision = precision
        self.max_batch = int(max_batch)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._net = net
        self._hash = state_digest(net)
        self._contexts: dict[tuple[int, ...], tuple] = {}

    def engine_path(self, input_shape: tuple[int, int, int]) -> Path:
        import tensorrt as trt

        gpu = torch.cuda.get_device_name(self.device)
        return self.cache_dir / engine_file_name(gpu, trt.__version__, self._hash, input_shape,
                                                 self.max_batch, self.precision)

    def serialized(self, input_shape: tuple[int, int, int]) -> bytes:
        """The serialized engine for this image shape: from the cache, or built and cached."""
        path = self.engine_path(input_shape)
        if path.is_file():
            return path.read_bytes()
        model = export_onnx(self._net, input_shape, precision=self.precision)
        with torch.cuda.device(self.device):
            data = build_serialized_engine(model, input_shape, max_batch=self.max_batch,
                                           precision=self.precision)
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_bytes(data)
        return data

    def _context(self, input_shape: tuple[int, int, int]) -> tuple:
        if input_shape not in self._contexts:
            import tensorrt as trt

            data = self.serialized(input_shape)
            with torch.cuda.device(self.device):
                runtime = trt.Runtime(_logger())
                engine = runtime.deserialize_cuda_engine(data)
                if engine is None:
                    raise FormatError(f"TensorRT could not load the cached engine "
                                      f"{self.engine_path(input_shape)}; delete it to rebuild")
                context = engine.create_execution_context()
            n_features = int(engine.get_tensor_shape(OUTPUT_NAME)[1])
            self._contexts[input_shape] = (runtime, engine, context, n_features)
        return self._contexts[input_shape]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x)
        _, _, context, n_features = self._context(tuple(x.shape[1:]))
        if len(x) == 0:
            return torch.empty((0, n_features), device=self.device)
        stream = torch.cuda.current_stream(self.device)
        outs = []
        for chunk in x.split(self.max_batch):
            chunk = chunk.to(self.device, non_blocking=True).float().contiguous()
            out = torch.empty((chunk.shape[0], n_features), device=self.device, dtype=torch.float32)
            context.set_input_shape(INPUT_NAME, tuple(chunk.shape))
            context.set_tensor_address(INPUT_NAME, chunk.data_ptr())
            context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise GalspecError(f"TensorRT failed to run a batch of shape {tuple(chunk.shape)}")
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs)
