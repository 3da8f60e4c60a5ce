"""``galspec export``: a checkpoint's body as an ONNX file or a TensorRT engine, checked against eager."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from galspec_batch import defaults as D
from galspec_batch.atomic import atomic_path
from galspec_batch.errors import UsageError, did_you_mean

from .base import INPUT_NAME, OUTPUT_NAME, random_flux
from .eager import EagerEngine
from .onnx import export_onnx


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    precision: str
    max_abs_diff: float  # against fp32 eager, on a random batch with NaN pixels
    max_abs_feature: float  # the scale max_abs_diff is to be read against


def export_checkpoint(
    checkpoint: str | os.PathLike,
    format: str,
    out: str | os.PathLike,
    *,
    precision: str = D.EXPORT_PRECISION,
    max_batch: int = D.EXPORT_MAX_BATCH,
    n_check: int = 8,
    overwrite: bool = False,
) -> ExportResult:
    """Export a checkpoint's body (preprocessing + CNN, deconvolution folded) to ``out``.

    ``onnx`` writes an ONNX model with a dynamic batch axis (checked, and run with onnxruntime on
    the CPU); ``tensorrt`` builds a serialized engine for batches 1..``max_batch`` on this
    machine's GPU. Either is compared with fp32 eager on ``n_check`` random images.
    """
    from galspec_batch.checkpoint import load_checkpoint

    if format not in D.EXPORT_FORMATS:
        raise UsageError(f"unknown export format {format!r}; expected one of {', '.join(D.EXPORT_FORMATS)}."
                         + did_you_mean(format, D.EXPORT_FORMATS))
    ck = load_checkpoint(checkpoint)
    input_shape = (len(ck.bands), *ck.image_size)
    x = random_flux(n_check, input_shape)
    out = Path(out)
    if format == "onnx":
        import onnxruntime as ort

        model = export_onnx(ck.net, input_shape, out, precision=precision, overwrite=overwrite)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
        device = "cpu"
    else:
        from .tensorrt import TensorRTEngine

        engine = TensorRTEngine(ck.net, device="cuda", precision=precision, max_batch=max_batch)
        data = engine.serialized(input_shape)
        with atomic_path(out, overwrite=overwrite) as tmp:
            tmp.write_bytes(data)
        got = engine.features(x).cpu()
        device = "cuda"
    want = EagerEngine(ck.net, device=device, channels_last=False).features(x).cpu()
    return ExportResult(out, format, precision, float((got - want).abs().max()), float(want.abs().max()))
