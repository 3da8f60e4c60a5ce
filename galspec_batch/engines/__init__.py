"""Inference engines for a network's body, and its export to ONNX and TensorRT.

    engine = create_engine("auto", net, device="cuda", precision="fp16")
    feats = engine.features(images)   # float32 [N, F] on engine.device
    stats = mc_predict(feats, object_ids, *head_parameters(net.head), T=32, seed=run_seed,
                       head=net.head_kind)

Engines: eager, compile (torch.compile), onnxruntime (CPU), tensorrt (GPU, cached engines) and
auto. Every engine folds deconvolution layers into plain convolutions first.
"""

from .auto import ENGINE_NAMES, choose_engine, create_engine, list_engines, unavailable_reason
from .base import PRECISIONS, Engine, FeatureGraph, state_digest
from .export import ExportResult, export_checkpoint
from .onnx import export_onnx

__all__ = [
    "ENGINE_NAMES",
    "PRECISIONS",
    "Engine",
    "ExportResult",
    "FeatureGraph",
    "choose_engine",
    "create_engine",
    "export_checkpoint",
    "export_onnx",
    "list_engines",
    "state_digest",
    "unavailable_reason",
]
