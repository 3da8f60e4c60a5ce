"""Training the image-to-latent CNN: preprocessing, RAdam + LookAhead under one-cycle, D4
augmentation, store + labels data, and a resumable, fine-tunable loop.

    from galspec_batch.training import TrainSettings, fit
    result = fit("survey.zarr", "latents.parquet", "runs/hybrid", TrainSettings(model="xresnet18-hybrid"))
"""

from .augment import d4_transform, random_d4
from .data import Labels, read_training_labels, split_indices
from .loop import TrainResult, TrainSettings, default_max_lr, fit
from .optim import Lookahead, make_one_cycle, make_optimizer
from .preprocess import fit_preprocess, robust_sky_sigma

__all__ = [
    "Labels",
    "Lookahead",
    "TrainResult",
    "TrainSettings",
    "d4_transform",
    "default_max_lr",
    "fit",
    "fit_preprocess",
    "make_one_cycle",
    "make_optimizer",
    "random_d4",
    "read_training_labels",
    "robust_sky_sigma",
    "split_indices",
]
