"""Batch prediction: MC-dropout latents for every cutout of a store, into a HATS catalog."""

from galspec_batch.predict.runner import (
    PartitionsFailed,
    PredictSummary,
    finalize_catalog,
    predict_catalog,
)
from galspec_batch.predict.worker import ModelSpec, Predictor

__all__ = [
    "ModelSpec",
    "PartitionsFailed",
    "PredictSummary",
    "Predictor",
    "finalize_catalog",
    "predict_catalog",
]
