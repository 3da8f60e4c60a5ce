"""ONNX export of the body, and the ``onnxruntime`` engine that runs it on the CPU.

The exported graph is the whole of :class:`~galspec_batch.engines.base.FeatureGraph`: float32
images ``images`` [batch, B, H, W] (NaN allowed: IsNaN/IsInf/Where and the asinh stretch are in the graph) ->
float32 ``features`` [batch, F], deconvolution folded into Conv, with a dynamic batch axis. For
fp16 the CNN's weights and activations are float16 inside the graph and the inputs and outputs
stay float32; TensorRT builds from exactly these graphs.

The export uses PyTorch's TorchScript exporter (the torch.export-based one needs onnxscript).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path
from galspec_batch.errors import InputError

from .base import INPUT_NAME, OUTPUT_NAME, Engine, FeatureGraph, check_images, check_precision, resolve_device

OPSET = 17


def export_onnx(
    net: nn.Module,
    input_shape: tuple[int, int, int],
    path: str | os.PathLike | None = None,
    *,
    precision: str = "fp32",
    overwrite: bool = False,
) -> bytes:
    """The ONNX model of ``net``'s body for images of shape [batch, *input_shape], checked.

    Written atomically to ``path`` when one is given. ``precision`` is fp32 or fp16.
    """
    import onnx

    if precision not in D.EXPORT_PRECISIONS:
        raise InputError(f"ONNX export supports precision fp32 or fp16, got {precision!r}")
    graph = FeatureGraph(net, check_precision(precision)).cpu()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own notices
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks seen as constants
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    if path is not None:
        with atomic_path(path, overwrite=overwrite) as tmp:
            Path(tmp).write_bytes(data)
    return data


class OnnxRuntimeEngine(Engine):
    """Runs the exported body with onnxruntime's CPU provider.

    The graph is exported on the first call for each image shape. onnxruntime uses as many
    threads as torch does (``torch.get_num_threads()``), so a worker's thread setting holds for both.
    """

    name = "onnxruntime"

    def __init__(self, net: nn.Module, *, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool | None = None, max_batch: int = 1024) -> None:
        self.device = resolve_device(device)
        if self.device.type != "cpu":
            raise InputError(f"the onnxruntime engine runs on the CPU, not {self.device}; "
                             f"use 'tensorrt' or 'compile' on a GPU")
        if precision not in D.EXPORT_PRECISIONS:
            raise InputError(f"the onnxruntime engine supports fp32 or fp16, got {precision!r}")
        self.precision = precision
        self.max_batch = int(max_batch)
        self._net = net
        self._sessions: dict[tuple[int, ...], object] = {}

    def session(self, input_shape: tuple[int, int, int]):
        """The onnxruntime session for images of shape [batch, *input_shape] (exported once)."""
        import onnxruntime as ort

        if input_shape not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            model = export_onnx(self._net, input_shape, precision=self.precision)
            self._sessions[input_shape] = ort.InferenceSession(
                model, options, providers=["CPUExecutionProvider"])
        return self._sessions[input_shape]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x)
        session = self.session(tuple(x.shape[1:]))
        outs = []
        for chunk in x.split(self.max_batch) if len(x) else [x]:
            batch = np.ascontiguousarray(chunk.detach().cpu().float().numpy())
            outs.append(torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]))
        return outs[0] if len(outs) == 1 else torch.cat(outs)
