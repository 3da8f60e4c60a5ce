"""Batch prediction: MC-dropout latents for every cutout of a store, into a HATS catalog."""

from galspec_batch.predict.begin import Begun, RunIdentity, begin_catalog, join_catalog
from galspec_batch.predict.runner import (
    PartitionsFailed,
    PredictSummary,
    finalize_catalog,
    predict_catalog,
)
from galspec_batch.predict.worker import ModelSpec, Predictor

__all__ = [
    "Begun",
    "ModelSpec",
    "PartitionsFailed",
    "PredictSummary",
    "Predictor",
    "RunIdentity",
    "begin_catalog",
    "finalize_catalog",
    "join_catalog",
    "predict_catalog",
]
